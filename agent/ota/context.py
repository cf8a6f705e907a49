"""What every stage of an update works with: the stores, the ports, the configuration, the
current record and the inbox (one :class:`UpdateContext` per updater)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from agent.config.agent import OtaConfig
from agent.ota.inbox import Inbox
from agent.ota.ports import UpdaterPorts
from agent.ota.store import VersionStore
from agent.ota.tracker import UpdateTracker
from agent.ota.verify import Verifier


@dataclass
class UpdateContext:
    verifier: Verifier
    store: VersionStore
    ports: UpdaterPorts
    config: OtaConfig
    tracker: UpdateTracker
    inbox: Inbox
    #: model name → the bundle in agent.yaml: the rollback target when no OTA version of that
    #: model was committed yet
    initial_bundles: dict[str, Path] = field(default_factory=dict[str, Path])
    stop: threading.Event = field(default_factory=threading.Event)
