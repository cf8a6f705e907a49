"""Over-the-air model updates: signed manifests, verification, fetch, staged activation.

Fleet side: :mod:`agent.fleet` (``edge-agent keygen`` / ``edge-agent push``). Device side:
:class:`~agent.ota.trust.TrustStore` and :class:`~agent.ota.verify.Verifier` accept a push,
:mod:`agent.ota.fetch` gets its files, :class:`~agent.ota.store.VersionStore` keeps versions on
disk and :class:`~agent.ota.updater.Updater` builds, activates, watches and commits or rolls back
(through the ports of :mod:`agent.ota.ports`). Reason codes: :mod:`agent.ota.reasons`.
"""
