"""``edge-agent keygen | push | ota-status``: signed over-the-air model pushes.

* ``keygen --out DIR`` — an Ed25519 key pair for signing pushes (NAME.key 0600, NAME.pub).
* ``push BUNDLE --key K --version N ...`` — hash the bundle, sign the manifest, and publish it
  (QoS 1) to ``edge/<fleet>/<device>/ota`` or ``edge/<fleet>/group/<group>/ota``; the files are
  fetched from ``--url``, from a local server (``--serve``), or sent inline as MQTT chunks.
* ``ota-status --state-dir DIR`` — the device's OTA journal, committed versions and
  high-water marks.

The operator-side work lives in :mod:`agent.fleet` (keygen, publish, server); this module only
turns arguments into requests and results into output.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from agent.cli.common import print_json
from agent.config.load import load_run_config
from agent.core.errors import OtaError
from agent.fleet.keygen import generate_keypair
from agent.fleet.publish import (
    GoldenRequest,
    PushRequest,
    ServeRequest,
    plan_push,
    sign_and_publish,
    start_payload,
)
from agent.fleet.server import BundleServer
from agent.ota.manifest import Compat
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


# ---------------------------------------------------------------------------- push


def _csv(text: str | None) -> list[str]:
    return [p.strip() for p in (text or "").split(",") if p.strip()]


def _push_request(args: argparse.Namespace) -> PushRequest:
    golden = None
    if args.golden:
        golden = GoldenRequest(Path(args.golden), atol=args.golden_atol, rtol=args.golden_rtol)
    return PushRequest(
        bundle_dir=Path(args.bundle),
        key_path=Path(args.key),
        version=args.version,
        fleet=args.fleet,
        device=args.device,
        group=args.group,
        source="serve" if args.serve else "inline" if args.inline else "url",
        url=args.url,
        serve=ServeRequest(args.host, args.port, args.advertise_host),
        expires_in=args.expires_in,
        compat=Compat(
            profiles=_csv(args.profiles),
            families=_csv(args.families),
            min_tensorrt=args.min_tensorrt,
            min_jetpack=args.min_jetpack,
        ),
        golden=golden,
        chunk_kib=args.chunk_kib,
        max_inline_mib=args.max_inline_mib,
        mqtt_url=args.mqtt_url,
        out=Path(args.out) if args.out else None,
    )


def _cmd_push(args: argparse.Namespace) -> int:
    request = _push_request(args)
    plan = plan_push(request)
    payload, server = start_payload(request, plan)
    try:
        result = sign_and_publish(request, plan, payload)
        if not args.mqtt_url and not args.out:
            print_json(result.envelope)
        else:
            print_json(result.summary(args.out))
        if server is not None:
            _serve(server, args.serve_for)
    finally:
        if server is not None:
            server.stop()
    return 0


def _serve(server: BundleServer, seconds: float) -> None:
    print(
        f"serving {len(server.files)} files at {server.base_url} for {seconds:g} s (Ctrl-C stops)",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.serve_for(seconds)
    except KeyboardInterrupt:
        print("stopped serving", file=sys.stderr)


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
    _register_push(sub)
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


def _register_push(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "push",
        help="sign and publish a model bundle to a device or group over MQTT",
        description="Hashes every file of BUNDLE, signs a manifest (Ed25519 over canonical "
        "JSON) and publishes it at QoS 1 to edge/<fleet>/<device>/ota or "
        "edge/<fleet>/group/<group>/ota. Without --mqtt-url and --out the signed envelope is "
        "printed.",
    )
    p.add_argument("bundle", help="bundle directory (model.yaml, ONNX, labels)")
    p.add_argument("--key", required=True, help="private key from `edge-agent keygen`")
    p.add_argument(
        "--version", required=True, type=int, help="monotonic version (> the last pushed)"
    )
    p.add_argument("--expires-in", default="24h", help="manifest lifetime (e.g. 24h, 30m, 7d)")
    p.add_argument("--profiles", default=None, help="comma-separated device profiles allowed")
    p.add_argument("--families", default=None, help="comma-separated board families allowed")
    p.add_argument("--min-tensorrt", default=None, help="lowest TensorRT version, e.g. 10.3")
    p.add_argument("--min-jetpack", default=None, help="lowest JetPack version, e.g. 6.1")
    p.add_argument(
        "--golden", default=None, help="directory of NAME.input.npy / NAME.expected.npy pairs"
    )
    p.add_argument("--golden-atol", default="0.05", help="golden absolute tolerance (decimal)")
    p.add_argument("--golden-rtol", default="0.05", help="golden relative tolerance (decimal)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--url", default=None, help="base URL the device downloads files from")
    src.add_argument("--serve", action="store_true", help="serve the files from this host")
    src.add_argument("--inline", action="store_true", help="send the files as MQTT chunks")
    p.add_argument("--host", default="127.0.0.1", help="--serve: address to bind")
    p.add_argument("--port", type=int, default=0, help="--serve: port (0 = a free one)")
    p.add_argument(
        "--advertise-host", default=None, help="--serve: host name devices use (default --host)"
    )
    p.add_argument("--serve-for", type=float, default=600.0, help="--serve: seconds to serve")
    p.add_argument("--chunk-kib", type=int, default=64, help="--inline: chunk size in KiB")
    p.add_argument(
        "--max-inline-mib", type=int, default=16, help="--inline: largest bundle sent inline"
    )
    tgt = p.add_mutually_exclusive_group(required=True)
    tgt.add_argument("--device", default=None, help="target device id")
    tgt.add_argument("--group", default=None, help="target group")
    p.add_argument("--fleet", required=True, help="fleet name")
    p.add_argument("--mqtt-url", default=None, help="broker, mqtt://host:port or mqtts://...")
    p.add_argument("--out", default=None, help="also write the signed envelope to this file")
    p.set_defaults(handler=_cmd_push)


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
