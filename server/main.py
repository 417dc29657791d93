"""kvmmu-server entry point."""

from __future__ import annotations

import sys


def main() -> int:
    print("kvmmu-server: the gRPC server does not exist yet (issue #5).", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
