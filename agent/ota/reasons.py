"""Which :class:`~agent.core.errors.OtaReason` codes mean a refused push, and the reason
recovery gives an interrupted update. The values are wire strings: never change one."""

from __future__ import annotations

from agent.core.errors import OtaReason

#: The reasons an :class:`~agent.core.errors.OtaRejected` carries.
REJECT_REASONS = frozenset(
    {
        OtaReason.BAD_SIGNATURE,
        OtaReason.UNKNOWN_KEY,
        OtaReason.EXPIRED,
        OtaReason.NOT_NEWER,
        OtaReason.INCOMPATIBLE,
        OtaReason.WRONG_TARGET,
        OtaReason.SIZE_MISMATCH,
        OtaReason.HASH_MISMATCH,
        OtaReason.OVER_QUOTA,
        OtaReason.UNSAFE_PATH,
        OtaReason.EXTERNAL_DATA_OUTSIDE_BUNDLE,
        OtaReason.MALFORMED,
    }
)


def interrupted_at(stage: str) -> str:
    """The reason recovery gives an update it found unfinished (``interrupted at <stage>``)."""
    return f"interrupted at {stage}"
