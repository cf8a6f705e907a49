#!/usr/bin/env python3
"""Write the Mosquitto ACL of a fleet (docs/broker-acl.md).

    python deploy/mosquitto/gen_acl.py --fleet prod [--operator fleet-ops] \
        [--inventory devices.txt] [--passwd /etc/mosquitto/passwd] \
        [--out /etc/mosquitto/edge-agent.acl]

Without ``--inventory`` every device of the fleet may read every group's OTA topic (shared
mode); with it (lines ``<device> <group> ...``) only a group's members may (strict mode).
Rerun it whenever a device changes group and send mosquitto SIGHUP to reload the file.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent.core.errors import EdgeAgentError
from agent.fleet.acl import AclSpec, check_passwd_users, mosquitto_acl, parse_inventory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the Mosquitto ACL of a fleet.")
    parser.add_argument("--fleet", required=True, help="fleet name (agent.yaml fleet)")
    parser.add_argument(
        "--operator",
        action="append",
        help="broker user of the fleet tools (repeatable; default: operator)",
    )
    parser.add_argument("--inventory", type=Path, help="strict mode: '<device> <group>...' lines")
    parser.add_argument(
        "--passwd", type=Path, help="also check every user of this mosquitto_passwd file"
    )
    parser.add_argument("--out", type=Path, help="write here (atomically) instead of stdout")
    args = parser.parse_args(argv)
    try:
        members = None if args.inventory is None else parse_inventory(args.inventory.read_text())
        operators = tuple(args.operator or ["operator"])
        text = mosquitto_acl(AclSpec(args.fleet, operators, members))
        if args.passwd is not None:
            check_passwd_users(args.passwd.read_text(), operators)
    except (EdgeAgentError, OSError) as exc:
        print(f"gen_acl: {exc}", file=sys.stderr)
        return 2
    if args.out is None:
        sys.stdout.write(text)
        return 0
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
