"""``python -m posthog_errors``: the same as the ``posthog-errors`` command."""

from __future__ import annotations

import sys

from posthog_errors.cli import main

if __name__ == "__main__":
    sys.exit(main())
