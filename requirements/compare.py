"""What moved between two pip lock files: ``python requirements/compare.py OLD NEW``.

`make test-latest` prints it before running the checks on the newest releases, so a red run
names its suspects (a new major version of sentry-sdk, say) before the first failure does.
A lock line is ``name==version`` with an optional ``; marker``. A universal lock pins some
names once per range of Pythons: only the pins whose marker holds for the Python running
this script are compared (the fresh lock is resolved for that Python), so what is printed
is what would change in an install here.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from packaging.markers import Marker

__all__ = ["main", "read_pins"]

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)\s*(?:;\s*(.*))?$")


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path) -> dict[str, set[str]]:
    """Each package's pinned versions that apply to this interpreter and platform."""
    pins: dict[str, set[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _PIN.match(line.strip())
        if match:
            name, version, marker = match.groups()
            if marker and not Marker(marker).evaluate():
                continue
            pins.setdefault(_normal(name), set()).add(version)
    return pins


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: compare.py OLD_LOCK NEW_LOCK", file=sys.stderr)
        return 2
    old, new = (read_pins(Path(arg)) for arg in argv)
    lines = []
    for name in sorted(old.keys() | new.keys()):
        before, after = old.get(name, set()), new.get(name, set())
        if before == after:
            continue
        if not before:
            lines.append(f"  + {name} {', '.join(sorted(after))}")
        elif not after:
            lines.append(f"  - {name} {', '.join(sorted(before))}")
        else:
            lines.append(f"  ~ {name} {', '.join(sorted(before))} -> {', '.join(sorted(after))}")
    print("\n".join(lines) if lines else "  nothing: the lock is at the newest releases")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
