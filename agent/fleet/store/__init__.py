"""Where the fleet controller keeps its state: the device registry and the rollouts.

:mod:`.base` declares the ports (:class:`~.base.RolloutStore`, :class:`~.base.FleetStore`);
:mod:`.sqlite` is the default home (one WAL file), :mod:`.postgres` the shared one for several
controller instances; :func:`~.open.open_store` picks one from the ``store`` section of
``fleet.yaml``.
"""
