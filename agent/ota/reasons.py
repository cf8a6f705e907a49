"""Which :class:`~agent.core.errors.OtaReason` codes mean a refused push, and the reason
recovery gives an interrupted update. The values are wire strings: never change one."""

from __future__ import annotations

from agent.core.errors import OtaReason
from agent.ota.states import UpdateState

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


#: The reasons of a failed transfer: the same signed manifest may be sent again.
TRANSFER_REASONS = frozenset(
    {
        OtaReason.FETCH_FAILED,
        OtaReason.DOWNLOAD_TIMEOUT,
        OtaReason.INCOMPLETE,
        OtaReason.HASH_MISMATCH,
        OtaReason.SIZE_MISMATCH,
    }
)


def transfer_failed(state: UpdateState, reason: str | None, states: list[UpdateState]) -> bool:
    """Whether an update ended in its transfer: failed or rejected right after ``verified``
    with a transfer reason (a later failure — bad bundle, build, probation — is not one)."""
    return (
        state in (UpdateState.FAILED, UpdateState.REJECTED)
        and reason in TRANSFER_REASONS
        and len(states) >= 2
        and states[-2] is UpdateState.VERIFIED
    )
