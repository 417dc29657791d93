"""Generate the Python protobuf/gRPC code (with mypy stubs) from protos/.

protos/ is the single source of truth; the output under kvmmu/ is committed
so that users and type checkers see it without a build step. `--check`
regenerates into a scratch directory and fails if anything differs.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE = "kvmmu"
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def generate(out: Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    if not protos:
        sys.exit("protogen: no .proto files under protos/")
    bindir = Path(sys.executable).parent
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *protos,
    ]
    subprocess.run(cmd, check=True)
    for directory in [out / PACKAGE, *(p for p in (out / PACKAGE).rglob("*") if p.is_dir())]:
        marker = directory / "__init__.py"
        if not marker.exists():
            marker.write_text('"""Generated from protos/ by scripts/protogen.py; do not edit."""\n')
    (out / PACKAGE / "py.typed").touch()


def generated_files(base: Path) -> set[Path]:
    return {
        p.relative_to(base)
        for p in (base / PACKAGE).rglob("*")
        if p.is_file() and (p.name.endswith(SUFFIXES) or p.name in ("__init__.py", "py.typed"))
    }


def check() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        generate(scratch)
        want, have = generated_files(scratch), generated_files(ROOT)
        problems = [f"missing: {p}" for p in sorted(want - have)]
        problems += [f"stale (no .proto generates it): {p}" for p in sorted(have - want)]
        problems += [
            f"differs: {p}"
            for p in sorted(want & have)
            if not filecmp.cmp(scratch / p, ROOT / p, shallow=False)
        ]
    if problems:
        print("generated code is out of sync with protos/ (run `make proto`):")
        print("\n".join(f"  {line}" for line in problems))
        return 1
    print(f"generated code in sync with protos/ ({len(want)} files)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, help="write generated code under this directory")
    parser.add_argument("--check", action="store_true", help="verify the committed code")
    args = parser.parse_args()
    if args.check:
        return check()
    out = args.out or ROOT
    stale = out / PACKAGE
    for p in generated_files(out) if stale.exists() else ():
        (out / p).unlink()
    generate(out)
    shutil.rmtree(out / PACKAGE / "__pycache__", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
