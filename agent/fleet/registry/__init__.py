"""The fleet controller's device registry: typed records (:mod:`.records`) built from the
devices' MQTT messages (:mod:`.wire` parses, :mod:`.merge` decides, :mod:`.ingest` drives) and
kept in a :class:`~.store.RegistryStore` (SQLite by default)."""
