"""``edge-agent push BUNDLE --key K --version N ...``: sign a model bundle and send it.

The manifest goes (QoS 1) to ``edge/<fleet>/<device>/ota`` or ``edge/<fleet>/group/<group>/ota``;
devices fetch the files from ``--url``, from a local server (``--serve``) or as inline MQTT
chunks. With a broker (``--mqtt-url`` and the other ``--mqtt-*`` options of
:mod:`agent.cli.broker_args`) the push first checks that the broker knows the target (the
retained ``state`` of the device, or the births announcing ``--group``), then publishes, then
follows the targets' OTA records for ``--wait`` seconds and says which devices it reached.

stdout is JSON (the signed envelope without a broker and ``--out``; else the summary, plus
``reached``/``rejected``/``silent``/``offline``/``unknown`` with a broker); without ``--json``
the report is also written in words to stderr. Exit codes: 0 published (reached or not),
2 usage (an unknown device or group included), 1 broker or signing failure.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.cli.broker_args import add_broker_arguments, broker_from_args
from agent.cli.common import print_json
from agent.config.broker import MqttConfig
from agent.fleet.publish import (
    GoldenRequest,
    PushPlan,
    PushRequest,
    PushResult,
    ServeRequest,
    plan_push,
    sign_and_publish,
    start_payload,
)
from agent.fleet.reach import PushWatch, ReachReport, check_targets
from agent.fleet.server import BundleServer
from agent.ota.manifest import Compat

__all__ = ["register_push"]


def _csv(text: str | None) -> list[str]:
    return [p.strip() for p in (text or "").split(",") if p.strip()]


def _push_request(args: argparse.Namespace, broker: MqttConfig | None) -> PushRequest:
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
        out=Path(args.out) if args.out else None,
        mqtt=broker,
        retain=args.retain,
    )


def _cmd_push(args: argparse.Namespace) -> int:
    broker = broker_from_args(args)
    request = _push_request(args, broker)
    plan = plan_push(request)
    if broker is None:
        result, server = _sign(request, plan)
        print_json(result.summary(args.out) if args.out else result.envelope)
    else:
        result, server, report = _push_watched(args, request, plan, broker)
        _print_report(args, result, report)
    if server is not None:
        try:
            _serve(server, args.serve_for)
        finally:
            server.stop()
    return 0


def _sign(request: PushRequest, plan: PushPlan) -> tuple[PushResult, BundleServer | None]:
    """Sign (and publish); the started ``--serve`` server is the caller's to stop."""
    payload, server = start_payload(request, plan)
    try:
        return sign_and_publish(request, plan, payload), server
    except BaseException:
        if server is not None:
            server.stop()
        raise


def _push_watched(
    args: argparse.Namespace, request: PushRequest, plan: PushPlan, broker: MqttConfig
) -> tuple[PushResult, BundleServer | None, ReachReport]:
    """Check the target on the broker, publish, follow the answers."""
    with PushWatch(broker, request.fleet, device=request.device) as watch:
        watch.open(broker.publish_timeout_s)
        known = watch.discover(args.discover_s)
        targets = check_targets(
            known,
            fleet=request.fleet,
            device=request.device,
            group=request.group,
            allow_unknown=args.allow_unknown,
        )
        result, server = _sign(request, plan)
        try:
            report = watch.follow(
                result.sha256,
                model=result.manifest.name,
                version=result.manifest.version,
                targets=targets,
                wait_s=args.wait,
            )
        except BaseException:
            if server is not None:
                server.stop()
            raise
    return result, server, report


def _print_report(args: argparse.Namespace, result: PushResult, report: ReachReport) -> None:
    print_json({**result.summary(args.out), **report.to_json()})
    if args.json:
        return
    for line in report.lines():
        print(f"push: {line}", file=sys.stderr)
    if result.retained:
        print(
            f"push: the manifest stays retained on {result.topic} until it expires; clear it "
            f"with an empty retained message (mosquitto_pub -r -n -t {result.topic})",
            file=sys.stderr,
        )


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


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text} must be >= 0")
    return value


def _register_source(p: argparse.ArgumentParser) -> None:
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


def _register_delivery(p: argparse.ArgumentParser) -> None:
    tgt = p.add_mutually_exclusive_group(required=True)
    tgt.add_argument("--device", default=None, help="target device id")
    tgt.add_argument("--group", default=None, help="target group")
    p.add_argument("--fleet", required=True, help="fleet name")
    p.add_argument("--out", default=None, help="also write the signed envelope to this file")
    p.add_argument(
        "--retain",
        action="store_true",
        help="keep the manifest on the broker so that an offline device gets it when it "
        "connects (until it expires; clear: mosquitto_pub -r -n -t TOPIC)",
    )
    p.add_argument(
        "--allow-unknown",
        action="store_true",
        help="push even when the broker knows no such device / no device of the group",
    )
    p.add_argument(
        "--discover-s",
        type=_non_negative,
        default=2.0,
        help="seconds to read the retained device states before pushing (default 2)",
    )
    p.add_argument(
        "--wait",
        type=_non_negative,
        default=10.0,
        help="seconds to follow the devices' answers after the push (default 10; 0: none)",
    )
    p.add_argument("--json", action="store_true", help="only the JSON on stdout, no words")


def register_push(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``push`` to the ``edge-agent`` parser."""
    p = sub.add_parser(
        "push",
        help="sign and publish a model bundle to a device or group over MQTT",
        description="Hashes every file of BUNDLE, signs a manifest (Ed25519 over canonical "
        "JSON) and publishes it at QoS 1 to edge/<fleet>/<device>/ota or "
        "edge/<fleet>/group/<group>/ota, after checking that the broker knows the target; "
        "then reports which devices it reached. Without --mqtt-url and --out the signed "
        "envelope is printed. Exit: 0 published, 2 usage or unknown target, 1 broker error.",
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
    _register_source(p)
    _register_delivery(p)
    add_broker_arguments(p)
    p.set_defaults(handler=_cmd_push)
