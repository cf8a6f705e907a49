"""Messages from the OTA topic that were dropped, counted by reason.

Anyone who can publish on a device's OTA topic can send garbage; nothing unsigned may fail an
update, change the retained ``model`` record or grow a buffer without bound. What is refused
before a signature verified is *dropped*: counted here (:class:`DropCounter`), logged once at
debug level, and summarised in one warning line at most every ``summary_every_s`` seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from enum import Enum

from agent.core.logs import log_fields

__all__ = ["DropCounter", "DropReason"]

log = logging.getLogger(__name__)


class DropReason(str, Enum):
    """Why an OTA message (or one chunk) was dropped. The values are counter labels."""

    # the inbox, before parsing
    QUEUE_FULL = "queue_full"
    TOO_LARGE = "too_large"
    # JSON refused by agent.core.jsonlimits.loads_bounded (same codes as JsonRejected.reason)
    TOO_DEEP = "too_deep"
    TOO_MANY_ITEMS = "too_many_items"
    NOT_UTF8 = "not_utf8"
    NOT_JSON = "not_json"
    BAD_UNICODE = "bad_unicode"
    NOT_AN_OBJECT = "not_an_object"
    # an envelope whose signature did not verify (nothing recorded, nothing published)
    UNVERIFIED_MALFORMED = "unverified_malformed"
    UNVERIFIED_UNKNOWN_KEY = "unverified_unknown_key"
    UNVERIFIED_BAD_SIGNATURE = "unverified_bad_signature"
    UNVERIFIED_UNSAFE_PATH = "unverified_unsafe_path"
    # chunk messages
    BAD_CHUNK = "bad_chunk"
    BUFFER_FULL = "buffer_full"
    EVICTED = "evicted"
    FINISHED = "finished"
    OTHER_MANIFEST = "other_manifest"
    UNKNOWN_FILE = "unknown_file"
    BAD_INDEX = "bad_index"
    COUNT_MISMATCH = "count_mismatch"
    OVERSIZED = "oversized"
    NOT_BASE64 = "not_base64"
    WRONG_SIZE = "wrong_size"
    CONFLICT = "conflict"

    @classmethod
    def unverified(cls, reason: str) -> DropReason:
        """The drop reason of an envelope refused with ``reason`` before it verified."""
        try:
            return cls(f"unverified_{reason}")
        except ValueError:
            return cls.UNVERIFIED_MALFORMED


class DropCounter:
    """Counts per :class:`DropReason` (thread-safe); a summary warning at most every
    ``summary_every_s`` seconds while drops happen (and on :meth:`flush` once due)."""

    def __init__(
        self, *, summary_every_s: float = 2.0, clock: Callable[[], float] = time.monotonic
    ):
        self.summary_every_s = summary_every_s
        self.clock = clock
        self._lock = threading.Lock()
        self._counts: dict[DropReason, int] = {}
        self._unreported = 0
        self._last_summary = float("-inf")

    def count(self, reason: DropReason, n: int = 1, **fields: object) -> None:
        """Count ``n`` drops of ``reason``; ``fields`` go into the debug line (keep them short
        and sanitized: they come from the network)."""
        with self._lock:
            self._counts[reason] = self._counts.get(reason, 0) + n
            self._unreported += n
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "OTA message dropped: %s",
                reason.value,
                extra=log_fields(reason=reason.value, **fields),
            )
        self.flush()

    def counts(self) -> dict[str, int]:
        """Drops so far by reason (label → count)."""
        with self._lock:
            return {r.value: n for r, n in sorted(self._counts.items())}

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def flush(self) -> None:
        """Log the summary when drops are unreported and the last summary is old enough."""
        with self._lock:
            now = self.clock()
            if not self._unreported or now - self._last_summary < self.summary_every_s:
                return
            new, self._unreported, self._last_summary = self._unreported, 0, now
            counts = {r.value: n for r, n in sorted(self._counts.items())}
        log.warning(
            "OTA messages dropped: %d since the last report (%d in all)",
            new,
            sum(counts.values()),
            extra=log_fields(event="ota.dropped", new=new, dropped=counts),
        )
