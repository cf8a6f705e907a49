#!/usr/bin/env python3
"""Regenerate the field reference tables of the configuration documents from the code.

    python scripts/gen_config_docs.py           # rewrite model-yaml.md and fleet.md
    python scripts/gen_config_docs.py --check   # exit 1 when the document is out of date

The tables come from the pydantic models' titles, descriptions, defaults, bounds and examples
(:mod:`agent.config.reference`); the prose around the markers is hand-written and kept.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.config.fleet import FleetConfig  # noqa: E402
from agent.config.model import ModelBundleConfig  # noqa: E402
from agent.config.reference import reference_markdown, replace_generated  # noqa: E402

#: document → the root model whose fields it documents
DOCUMENTS = {
    REPO / "docs" / "model-yaml.md": ModelBundleConfig,
    REPO / "docs" / "fleet.md": FleetConfig,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale documents")
    args = parser.parse_args(argv)
    stale = 0
    for path, model in DOCUMENTS.items():
        text = path.read_text(encoding="utf-8")
        fresh = replace_generated(text, reference_markdown(model))
        if fresh == text:
            continue
        stale += 1
        if args.check:
            print(f"{path.relative_to(REPO)} is out of date: run scripts/gen_config_docs.py")
        else:
            path.write_text(fresh, encoding="utf-8")
            print(f"rewrote {path.relative_to(REPO)}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
