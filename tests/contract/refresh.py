"""Refresh tests/contract/snapshots from the registered event models.

    python -m tests.contract.refresh            # write missing snapshots and compatible changes
    python -m tests.contract.refresh --force    # also overwrite breaking ones (unpublished versions only!)

A breaking change to a published (type, version) is a new version plus an upcaster, not a refresh.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence

from tests.contract.compat import SNAPSHOT_DIR, refresh_snapshots


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args not in ([], ["--force"]):
        print(__doc__, file=sys.stderr)
        return 2
    written, refused = refresh_snapshots(SNAPSHOT_DIR, force=args == ["--force"])
    for name in written:
        print(f"wrote {SNAPSHOT_DIR / (name + '.json')}")
    for name, problems in refused.items():
        print(f"REFUSED {name}: breaking change(s):", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
    if refused:
        print(
            "Publish the change as a new version with an upcaster, or, if this version was never "
            "published, rerun with --force.",
            file=sys.stderr,
        )
        return 1
    if not written:
        print("snapshots are up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
