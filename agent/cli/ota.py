"""``edge-agent keygen | push | ota-status``: signed over-the-air model pushes.

* ``keygen --out DIR`` — an Ed25519 key pair for signing pushes (NAME.key 0600, NAME.pub).
* ``push BUNDLE --key K --version N ...`` — hash the bundle, sign the manifest, publish it and
  say which devices it reached (:mod:`agent.cli.push`).
* ``ota-status --state-dir DIR`` — the device's OTA journal, committed versions and
  high-water marks.

The operator-side work lives in :mod:`agent.fleet` (keygen, publish, server); this module only
turns arguments into requests and results into output.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from agent.cli.common import print_json
from agent.cli.push import register_push
from agent.config.load import load_run_config
from agent.core.errors import OtaError
from agent.fleet.keygen import generate_keypair
from agent.ota.store import VersionStore

# ---------------------------------------------------------------------------- keygen


def _cmd_keygen(args: argparse.Namespace) -> int:
    pair = generate_keypair(Path(args.out), args.name)
    if args.json:
        print_json(
            {
                "private_key": str(pair.private_key),
                "public_key": str(pair.public_key),
                "key_id": pair.key_id,
            }
        )
    else:
        print(f"private key: {pair.private_key}  (keep it secret; mode 0600)")
        print(f"public key:  {pair.public_key}  (copy it into each device's ota.trust_dir)")
        print(f"key id:      {pair.key_id}")
    return 0


# ---------------------------------------------------------------------------- status


def _read_state(state_dir: Path) -> tuple[VersionStore, Any, Any]:
    """(store, journal without its envelope or None, high-water marks) under ``state_dir``."""
    root = state_dir / "ota"
    if not root.is_dir():
        raise OtaError(
            "no OTA state here yet",
            reason="usage",
            fix="pass the device's state directory (state_dir in agent.yaml)",
            path=root,
        )
    store = VersionStore(state_dir)
    journal: Any = None
    try:
        if store.journal_path.is_file():
            journal = json.loads(store.journal_path.read_text(encoding="utf-8"))
            journal.pop("envelope", None)
        hwm: Any = json.loads(store.hwm_path.read_text()) if store.hwm_path.is_file() else {}
    except (OSError, ValueError, AttributeError) as exc:
        raise OtaError(
            f"OTA state is unreadable: {exc}",
            reason="state_corrupt",
            fix="check the files under state_dir/ota (journal.json, hwm.json)",
            path=root,
        ) from exc
    return store, journal, hwm


def _print_status(report: dict[str, Any]) -> None:
    journal, hwm = report["journal"], report["high_water"]
    if journal:
        print(
            f"last update: {journal.get('model')} v{journal.get('version')} "
            f"{journal.get('state')}"
            + (
                f" ({journal.get('reason')}: {journal.get('detail')})"
                if journal.get("reason")
                else ""
            )
        )
    else:
        print("last update: none")
    for name, entry in report["committed"].items():
        print(f"committed:   {name} v{entry['version']} ({entry['bundle_dir']})")
    for name, versions in report["installed"].items():
        print(f"installed:   {name} {versions} (high-water {hwm.get(name, 0)})")


def _cmd_status(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir) if args.state_dir else None
    if state_dir is None:
        state_dir = load_run_config(Path(args.config)).state_dir.expanduser()
    store, journal, hwm = _read_state(state_dir)
    report = {
        "journal": journal,
        "committed": {k: v.to_json() for k, v in store.committed_all().items()},
        "high_water": hwm,
        "installed": {
            p.name: store.versions(p.name) for p in sorted(store.models_dir.iterdir()) if p.is_dir()
        },
    }
    if args.json:
        print_json(report)
        return 0
    _print_status(report)
    return 0


# ---------------------------------------------------------------------------- register


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``keygen``, ``push`` and ``ota-status`` to the ``edge-agent`` parser."""
    _register_keygen(sub)
    register_push(sub)
    _register_status(sub)


def _register_keygen(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    kg = sub.add_parser(
        "keygen",
        help="make an Ed25519 key pair for signing model pushes",
        description="Writes DIR/NAME.key (private, PEM, mode 0600) and DIR/NAME.pub (public). "
        "Refuses to overwrite. Copy NAME.pub into each device's ota.trust_dir.",
    )
    kg.add_argument("--out", required=True, help="directory for the key files")
    kg.add_argument("--name", default="fleet", help="file name stem (default: fleet)")
    kg.add_argument("--json", action="store_true")
    kg.set_defaults(handler=_cmd_keygen)


def _register_status(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    st = sub.add_parser(
        "ota-status",
        help="show the device's OTA journal, committed versions and high-water marks",
    )
    where = st.add_mutually_exclusive_group(required=True)
    where.add_argument("--state-dir", default=None, help="the agent's state directory")
    where.add_argument("--config", default=None, help="agent.yaml (its state_dir is used)")
    st.add_argument("--json", action="store_true")
    st.set_defaults(handler=_cmd_status)
