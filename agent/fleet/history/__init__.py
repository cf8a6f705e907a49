"""Per-device history kept by the fleet controller: metrics points (downsampled, retained for a
while), the last events and the last OTA updates of every device.

* :mod:`.records` — the typed rows (:class:`MetricsPoint`, :class:`EventEntry`), the figures a
  point takes from a metrics snapshot, bounded event data;
* :mod:`.buckets` — the pure downsampling of a query's points;
* :mod:`.store` — the :class:`HistoryStore` port; :mod:`.sqlite` its SQLite home (PostgreSQL:
  :mod:`agent.fleet.store.postgres.history`);
* :mod:`.recorder` — what the registry ingest reports, written to the store (one point per
  device per slot, pruning on a schedule).
"""
