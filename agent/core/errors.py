"""The one exception tree of Edge Agent.

Every error carries a message that says what went wrong *and how to fix it*. The CLI prints
``str(error)`` and exits with ``error.exit_code``; nothing below the CLI prints tracebacks for an
:class:`EdgeAgentError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path


class EdgeAgentError(Exception):
    """Base class. ``fix`` is a sentence telling the user what to do about it."""

    exit_code: int = 1

    def __init__(self, message: str, *, fix: str | None = None, path: Path | str | None = None):
        self.message = message
        self.fix = fix
        self.path = str(path) if path is not None else None
        super().__init__(self.__str__())

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        if self.fix:
            text += f" (fix: {self.fix})"
        return text


@dataclass(frozen=True)
class ConfigIssue:
    """One problem found in one configuration file, located to a line of its YAML source."""

    file: str
    line: int
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.key}: {self.message}"


class ConfigError(EdgeAgentError):
    """A configuration file (agent.yaml, a device profile, a model.yaml) is invalid."""

    exit_code = 2

    def __init__(self, issues: list[ConfigIssue]):
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues) or "invalid configuration")


class ProfileNotFound(EdgeAgentError):
    exit_code = 2


class DetectionError(EdgeAgentError):
    """Reading the board identity failed in a way that is not simply "not a Jetson"."""


class ModelError(EdgeAgentError):
    """A model bundle or ONNX file is unusable (not ONNX, truncated, unsupported op...)."""

    exit_code = 2


class CalibrationError(EdgeAgentError):
    """Calibration data is missing, empty, unreadable or does not match the model."""

    exit_code = 2


class BuildFailed(EdgeAgentError):
    """An engine build failed (in its isolated child process)."""

    def __init__(
        self,
        message: str,
        *,
        fix: str | None = None,
        path: Path | str | None = None,
        out_of_memory: bool = False,
        workspace_mib: int | None = None,
        memory_cap_mib: int | None = None,
    ):
        self.out_of_memory = out_of_memory
        self.workspace_mib = workspace_mib
        self.memory_cap_mib = memory_cap_mib
        super().__init__(message, fix=fix, path=path)


class BackendUnavailable(EdgeAgentError):
    """The requested inference backend (TensorRT, CUDA) cannot be used on this host."""


class ArtifactError(EdgeAgentError):
    """A cached engine/artifact is corrupted, mismatched or missing."""


class ValidationFailed(EdgeAgentError):
    """A candidate engine did not pass the validation gate against the float reference."""


class JtopUnavailable(EdgeAgentError):
    """jtop cannot be used here: not installed, or its service does not answer.

    :func:`agent.monitor.select.open_source` catches it and falls back to sysfs.
    """


class SourceError(EdgeAgentError):
    """A camera/video source cannot be opened or read."""


class PipelineError(EdgeAgentError):
    """The camera pipeline cannot do what was asked (e.g. a hot swap whose new engine's
    workers do not start); the model that is serving keeps serving."""


class CommsError(EdgeAgentError):
    """MQTT / network configuration or transport failure."""


class OtaReason(str, Enum):
    """The machine-readable reason codes of over-the-air updates, as they go on the wire (the
    retained model state, events, ``edge-agent ota`` output). A member equals its string
    (``OtaReason.EXPIRED == "expired"``) and formats as it."""

    # a push refused (OtaRejected): agent.ota.reasons.REJECT_REASONS
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_KEY = "unknown_key"
    EXPIRED = "expired"
    NOT_NEWER = "not_newer"
    INCOMPATIBLE = "incompatible"
    WRONG_TARGET = "wrong_target"
    SIZE_MISMATCH = "size_mismatch"
    HASH_MISMATCH = "hash_mismatch"
    OVER_QUOTA = "over_quota"
    UNSAFE_PATH = "unsafe_path"
    EXTERNAL_DATA_OUTSIDE_BUNDLE = "external_data_outside_bundle"
    MALFORMED = "malformed"
    # an update that failed (OtaError)
    FAILED = "failed"
    FETCH_FAILED = "fetch_failed"
    DOWNLOAD_TIMEOUT = "download_timeout"
    INCOMPLETE = "incomplete"
    STATE_CORRUPT = "state_corrupt"
    TRUST_STORE = "trust_store"
    SIGNING_KEY = "signing_key"
    INTERNAL = "internal"
    # operator tools (push, keygen, serve)
    USAGE = "usage"
    EXISTS = "exists"
    # the updater's outcomes, recorded in the update record
    BUILD_FAILED = "build_failed"
    BUILD_NOT_ADMITTED = "build_not_admitted"
    GOLDEN_MISMATCH = "golden_mismatch"
    ACTIVATE_FAILED = "activate_failed"
    INTERNAL_ERROR = "internal_error"
    NO_ROLLBACK_TARGET = "no_rollback_target"
    ROLLBACK_REQUESTED = "rollback_requested"
    PROBATION_CRASH = "probation_crash"
    PROBATION_NAN = "probation_nan"
    PROBATION_SLOW = "probation_slow"

    def __str__(self) -> str:
        return self.value

    def __format__(self, format_spec: str) -> str:
        return format(self.value, format_spec)


class OtaError(EdgeAgentError):
    """An over-the-air update failed. ``reason`` is a short machine-readable code (reported to
    the fleet in the retained model state), e.g. ``fetch_failed`` or ``build_failed``."""

    def __init__(
        self,
        message: str,
        *,
        reason: str = "failed",
        fix: str | None = None,
        path: Path | str | None = None,
    ):
        self.reason = reason
        super().__init__(message, fix=fix, path=path)


class OtaRejected(OtaError):
    """An over-the-air update was refused (signature, version, compatibility, size...).

    ``reason`` is one of the codes in :data:`agent.ota.reasons.REJECT_REASONS` (bad_signature,
    unknown_key, expired, not_newer, incompatible, size_mismatch, hash_mismatch, ...)."""

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        reason: str = "malformed",
        fix: str | None = None,
        path: Path | str | None = None,
    ):
        super().__init__(message, reason=reason, fix=fix, path=path)


class InternalError(Exception):
    """A bug in Edge Agent (an illegal state transition, a broken invariant), never a user error.

    Deliberately *not* an :class:`EdgeAgentError`: the CLI prints a traceback for it and exits 70,
    and callers must not catch it as a user mistake.
    """

    exit_code = 70
