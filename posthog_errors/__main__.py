"""The ``posthog-errors`` command line (also ``python -m posthog_errors``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="posthog-errors",
        description="Python failures as PostHog $exception events.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="run a sample app that fails, against an embedded local capture server",
        description="Run a small sample app that fails, capture its errors with an embedded "
        "PostHog-compatible server on 127.0.0.1 (no network), and print what PostHog "
        "would have received.",
    )
    demo.add_argument("--json", action="store_true", help="print the raw events as JSON")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from posthog_errors.demo import run_demo

        return run_demo(as_json=args.json)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
