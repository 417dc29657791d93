"""The `kvmmu` command line."""

from __future__ import annotations

import sys


def main() -> int:
    print("kvmmu: the CLI does not exist yet (issue #6).", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
