"""One deserialized engine per plan file, shared by every runner of that file.

A pool of N workers used to deserialize N copies of the same plan: on a Jetson, where the GPU
shares DRAM with the CPU, each copy holds the weights again (4–6 copies of a detector's weights in
a 4–8 GB board). TensorRT's model is one ``ICudaEngine`` with one ``IExecutionContext`` per
concurrent stream: the Python API docs say "Multiple IExecutionContext s may exist for one
ICudaEngine instance, allowing the same ICudaEngine to be used for the execution of multiple
batches simultaneously", and the developer guide's thread-safety section says the runtime and
engine may be used from several threads "so long as each object uses a different execution
context" (docs.nvidia.com/deeplearning/tensorrt, "How TensorRT Works": object lifetimes and
thread safety). So a runner leases the engine here and creates only its own context and stream.

Leases are counted; the last release drops the engine (after its contexts: every runner drops
its context before it releases). The key includes the file's identity (inode, size, mtime), so a
plan replaced in place is deserialized afresh, and the DLA core (``Runtime.DLA_core`` is set
before deserializing, so an engine loaded for one core is not one for another).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from agent.backends.tensorrt.loader import deserialize, make_logger, read_engine, trt
from agent.core.errors import InternalError

log = logging.getLogger(__name__)

#: (resolved path, inode, size, mtime_ns, DLA core or -1)
EngineKey = tuple[str, int, int, int, int]


@dataclass
class _Entry:
    logger: trt.ILogger
    runtime: trt.Runtime
    engine: trt.ICudaEngine
    users: int = 0


@dataclass(frozen=True)
class EngineLease:
    """A runner's share of an engine: give it back with :meth:`SharedEngines.release`."""

    key: EngineKey
    engine: trt.ICudaEngine


def engine_key(path: Path, dla_core: int | None) -> EngineKey:
    resolved = path.resolve()
    try:
        st = resolved.stat()
    except FileNotFoundError:
        read_engine(resolved)  # raises the ArtifactError that says how to rebuild
        raise
    core = -1 if dla_core is None else int(dla_core)
    return (str(resolved), st.st_ino, st.st_size, st.st_mtime_ns, core)


class SharedEngines:
    """Process-wide store of deserialized engines, counted by lease. Thread-safe: workers
    activate their runners in their own threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[EngineKey, _Entry] = {}

    def acquire(self, path: Path, dla_core: int | None = None) -> EngineLease:
        """The engine of ``path`` (deserialized on the first lease; raises ``ArtifactError``
        when the file is missing or not an engine of this TensorRT)."""
        key = engine_key(path, dla_core)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                # Deserialize under the lock: a second worker waits for this copy instead of
                # making its own (the point of sharing).
                logger = make_logger()
                runtime, engine = deserialize(logger, read_engine(path), path, dla_core)
                entry = self._entries[key] = _Entry(logger, runtime, engine)
                log.debug("deserialized %s (DLA core %s)", path, dla_core)
            entry.users += 1
            return EngineLease(key, entry.engine)

    def release(self, lease: EngineLease) -> None:
        with self._lock:
            entry = self._entries.get(lease.key)
            if entry is None or entry.users <= 0:
                raise InternalError(f"engine lease for {lease.key[0]} released twice")
            entry.users -= 1
            if entry.users == 0:
                del self._entries[lease.key]

    def users(self, path: Path, dla_core: int | None = None) -> int:
        """Live leases of ``path``'s engine (0 when none is loaded)."""
        with self._lock:
            entry = self._entries.get(engine_key(path, dla_core))
            return 0 if entry is None else entry.users


#: the store every :class:`~agent.backends.tensorrt.runner.TrtRunner` uses unless given another
SHARED = SharedEngines()
