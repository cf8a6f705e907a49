"""What scripts/install.sh asks of the device's Python, stdlib only (it runs before the package).

``constraints``: pip constraints that keep the venv's binary packages compatible with what the
system's Python ships. The venv is created with ``--system-site-packages`` so that JetPack's
``cv2`` (GStreamer + CUDA) and TensorRT bindings are the ones used; they are compiled against the
system's numpy (JetPack 6: Ubuntu 22.04, Python 3.10, numpy 1.21.5; JetPack 7: Ubuntu 24.04,
Python 3.12, numpy 1.26.4). A module compiled against numpy 1.x does not import under numpy 2
(NumPy 2.0 changed the C ABI; the other way round works: a module built against an older numpy
runs with any newer 1.x). So the venv's numpy must stay below the next major of the system's:

    numpy<2            (system numpy 1.21.5 or 1.26.4)

``check``: import ``cv2`` and ``numpy`` the way the daemon will, and explain a failure in one
paragraph (``install.sh`` stops on it: the daemon could not start).

    python3 -s scripts/device_python.py constraints [--path SITE_DIR ...]
    VENV/bin/python scripts/device_python.py check
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata as md
import re
import sys
from collections.abc import Iterable, Sequence

# Distributions whose compiled modules others in the system site are built against, and why.
_ABI_PINNED = {
    "numpy": "modules compiled against numpy N.x (JetPack's cv2, TensorRT) need numpy < N+1",
}


def system_versions(paths: Sequence[str] | None) -> dict[str, str]:
    """Installed versions of the ABI-pinned distributions in ``paths`` (``None``: ``sys.path``)."""
    found: dict[str, str] = {}
    dists: Iterable[md.Distribution] = (
        md.distributions() if paths is None else md.distributions(path=list(paths))
    )
    for dist in dists:
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name in _ABI_PINNED and name not in found:
            found[name] = dist.version
    return found


def constraint_lines(versions: dict[str, str]) -> list[str]:
    """``name<NEXT_MAJOR`` for each pinned distribution found, with the reason as a comment."""
    lines = []
    for name, version in sorted(versions.items()):
        match = re.match(r"(\d+)", version)
        if match is None:
            continue
        bound = int(match.group(1)) + 1
        lines.append(f"# system {name} {version}: {_ABI_PINNED[name]}")
        lines.append(f"{name}<{bound}")
    return lines


def check_imports() -> int:
    """0 when ``numpy`` and ``cv2`` import; 1 with an explanation on stderr otherwise."""
    try:
        numpy = importlib.import_module("numpy")
    except ImportError as exc:
        print(f"install.sh: error: numpy does not import in the venv: {exc}", file=sys.stderr)
        return 1
    try:
        cv2 = importlib.import_module("cv2")
    except ImportError as exc:
        print(
            f"install.sh: error: OpenCV (cv2) does not import in the venv with numpy "
            f"{numpy.__version__} from {numpy.__file__}: {exc}\n"
            "  JetPack's cv2 is compiled against the system's numpy 1.x and cannot load numpy 2.\n"
            "  Fix: re-run scripts/install.sh (it pins numpy below the system's next major "
            "through PREFIX/venv/edge-agent-constraints.txt), or by hand:\n"
            "    PREFIX/venv/bin/python -m pip install 'numpy<2'\n"
            "  and make sure JetPack's OpenCV is installed: apt-cache policy nvidia-opencv",
            file=sys.stderr,
        )
        return 1
    print(
        f"install.sh: cv2 {cv2.__version__} ({cv2.__file__}) with numpy {numpy.__version__} "
        f"({numpy.__file__})"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Device Python checks for scripts/install.sh")
    sub = parser.add_subparsers(dest="command", required=True)
    cons = sub.add_parser("constraints", help="print pip constraints for the venv")
    cons.add_argument(
        "--path",
        action="append",
        help="a site-packages directory to read instead of sys.path (repeatable)",
    )
    sub.add_parser("check", help="import numpy and cv2; explain a failure")
    args = parser.parse_args(argv)
    if args.command == "check":
        return check_imports()
    lines = constraint_lines(system_versions(args.path))
    print("# pip constraints written by scripts/install.sh (scripts/device_python.py)")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
