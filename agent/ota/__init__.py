"""Over-the-air model updates: signed manifests, verification, fetch, staged activation.

Fleet side: :mod:`agent.fleet.push` (``edge-agent keygen`` / ``edge-agent push``). Device side:
:class:`~agent.ota.trust.TrustStore` and :class:`~agent.ota.verify.Verifier` accept a push,
:mod:`agent.ota.fetch` gets its files, :class:`~agent.ota.store.VersionStore` keeps versions on
disk and :class:`~agent.ota.updater.Updater` builds, activates, watches and commits or rolls back.
"""

from __future__ import annotations

#: Machine-readable reasons an :class:`~agent.core.errors.OtaRejected` carries.
REJECT_REASONS = frozenset(
    {
        "bad_signature",
        "unknown_key",
        "expired",
        "not_newer",
        "incompatible",
        "wrong_target",
        "size_mismatch",
        "hash_mismatch",
        "over_quota",
        "unsafe_path",
        "external_data_outside_bundle",
        "malformed",
    }
)

__all__ = ["REJECT_REASONS"]
