"""Run a CommsService in its own process, for tests that kill or restart "the agent".

    python tests/comms_driver.py --url mqtt://127.0.0.1:PORT --state-dir DIR --device d1 \
        [--events N] [--rate R] [--then wait|drain|close] [--keepalive S]

Prints ``READY <status json>`` once started, ``PUBLISHED <n>`` after the events were handed to
the service and ``DONE <status json>`` before exiting (drain/close). ``wait`` idles until killed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent.comms.service import CommsService
from agent.config.broker import MqttConfig
from agent.core.logs import configure_logging


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--device", default="dev1")
    parser.add_argument("--fleet", default="fleet1")
    parser.add_argument("--keepalive", type=int, default=5)
    parser.add_argument("--events", type=int, default=0)
    parser.add_argument(
        "--rate", type=float, default=0.0, help="events/s (0 = as fast as possible)"
    )
    parser.add_argument("--then", choices=["wait", "drain", "close"], default="wait")
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()
    configure_logging("warning", stream=sys.stderr)
    cfg = MqttConfig(
        enabled=True,
        url=args.url,
        keepalive_s=args.keepalive,
        reconnect_min_s=0.2,
        reconnect_max_s=1.0,
    )
    svc = CommsService(cfg, fleet=args.fleet, device_id=args.device, state_dir=args.state_dir)
    svc.start()
    print("READY", json.dumps(svc.status().as_dict()), flush=True)
    for i in range(args.events):
        svc.publish_event("test.tick", {"i": i})
        if args.rate > 0:
            time.sleep(1.0 / args.rate)
    svc.spool.maybe_sync(force=True) if svc.spool else None
    print("PUBLISHED", args.events, flush=True)
    if args.then == "wait":
        while True:
            time.sleep(1)
    if args.then == "drain":
        svc.wait_drained(args.timeout)
    status = svc.status().as_dict()
    svc.close()
    print("DONE", json.dumps(status), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
