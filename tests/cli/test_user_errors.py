"""User errors are one line and an exit status, never a traceback; bytes that are not
UTF-8 pass through `trace decode`; --json is honoured by trace decode and report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmu import constants
from tests.cli.conftest import REPO, Cli

SAMPLE = REPO / "tests" / "data" / "sample-kvmmmu-trace.txt"
PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def run_bytes(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """kvmmu with byte-exact stdin and stdout (run_cli decodes them as text)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVMMU_")}
    return subprocess.run(
        [sys.executable, "-m", "client.cli", *args],
        cwd=REPO,
        env=env,
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
    )


# --- trace decode: any bytes in, the same bytes out ---------------------------------


def test_trace_decode_passes_undecodable_lines_through_byte_for_byte() -> None:
    sample = SAMPLE.read_bytes()
    spte_line = next(line for line in sample.splitlines(True) if b"kvm_mmu_set_spte" in line)
    data = b"\xff\n" + b"caf\xe9 \x00\x80 bytes\r\n" + spte_line + b"no newline at the end \xfe"
    proc = run_bytes("trace", "decode", "-", stdin=data)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines(True)
    assert out[:3] == data.splitlines(True)[:3]
    assert out[3].startswith(b"#kvmmu  spte 0x86000014002b3b77: leaf, level 1")
    assert out[4:] == [b"no newline at the end \xfe"]


def test_trace_decode_of_a_binary_file_is_that_file(tmp_path: Path) -> None:
    binary = tmp_path / "binary"
    binary.write_bytes(bytes(range(256)) * 64 + b"\n\xc3\x28\r\r\n\xff")
    proc = run_bytes("trace", "decode", str(binary))
    assert (proc.returncode, proc.stderr) == (0, b"")
    assert proc.stdout == binary.read_bytes()


def test_trace_decode_json_is_one_object_per_spte(offline: Cli) -> None:
    out = offline.ok("--json", "trace", "decode", str(SAMPLE), "--profile", "intel-ept")
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 9  # the '#kvmmu' lines of the text form
    first = records[0]
    assert list(first) == ["line", "text", "field", "decoding"]
    assert first["line"] == 15 and first["field"] == "old_spte"
    assert "kvm_tdp_mmu_spte_changed" in first["text"]
    assert first["decoding"]["kind"] == "SPTE_KIND_NON_PRESENT"
    mmio = next(r for r in records if "check_mmio_spte" in r["text"])
    assert mmio["decoding"]["value"] == str(0xFEB00016)
    assert mmio["decoding"]["kind"] == "SPTE_KIND_MMIO"


# --- output files: checked up front, real I/O failures exit 1 -----------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (
            ["decode", "0x1", "--profile", "intel-ept", "--svg", "/nonexistent/dir/x.svg"],
            "Invalid value for '--svg': cannot create /nonexistent/dir/x.svg: "
            "/nonexistent/dir does not exist",
        ),
        (
            ["decode", "0x1", "--profile", "intel-ept", "--svg", "-"],
            "Invalid value for '--svg': '-' (standard output) is not supported",
        ),
        (
            ["decode", "0x1", "--profile", "intel-ept", "--svg", "/tmp"],
            "Invalid value for '--svg': /tmp is a directory",
        ),
        (
            ["decode", "0x1", "--profile", "intel-ept", "--svg", "/etc/hostname/x.svg"],
            "/etc/hostname is not a directory",
        ),
        (
            ["report", "VM", "--html", "/nonexistent/d/x.html"],
            "Invalid value for '--html': cannot create /nonexistent/d/x.html",
        ),
        (["report", "VM", "--html", "-"], "Invalid value for '--html': '-' (standard output)"),
    ],
)
def test_unwritable_output_is_a_usage_error_before_anything_runs(
    offline: Cli, args: list[str], needle: str
) -> None:
    result = offline(*args)
    assert result.code == 2 and result.out == ""  # nothing printed before the refusal
    assert "Traceback" not in result.err and len(result.err.splitlines()) == 1
    assert needle in result.err


def test_a_failed_write_is_one_line_and_status_1(offline: Cli) -> None:
    line = offline.fails(1, "decode", "0x1", "--profile", "intel-ept", "--svg", "/dev/full")
    assert line == "kvmmu: cannot write /dev/full (--svg): No space left on device"
    scenario = str(REPO / "scenarios" / "dirty-logging.toml")
    line = offline.fails(1, "report", "--scenario", scenario, "--html", "/dev/full")
    assert line == "kvmmu: cannot write /dev/full (--html): No space left on device"


def test_report_json_names_the_file_and_its_size(offline: Cli, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    scenario = str(REPO / "scenarios" / "dirty-logging.toml")
    out = offline.ok("--json", "report", "--scenario", scenario, "--html", str(page))
    assert json.loads(out) == {"path": str(page), "bytes": page.stat().st_size}


# --- --server and TLS files: checked before any channel is made ---------------------


@pytest.mark.parametrize(
    ("server", "needle"),
    [
        ("127.0.0.1:99999", "'127.0.0.1:99999': the port must be a number in 1..65535"),
        ("127.0.0.1:0", "the port must be a number in 1..65535"),
        ("127.0.0.1:http", "the port must be a number in 1..65535"),
        ("", "expected HOST:PORT, got ''"),
        ("localhost", "expected HOST:PORT, got 'localhost'"),
        (":50051", "':50051' has no host"),
        ("::1:50051", "an IPv6 address goes in brackets, as in [::1]:50051"),
    ],
)
def test_bad_server_is_a_usage_error(offline: Cli, server: str, needle: str) -> None:
    line = offline.fails(2, "--server", server, "vm", "list")
    assert line.startswith("kvmmu: Invalid value for '--server': ")
    assert needle in line


def test_bad_server_from_the_environment_is_a_usage_error() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "client.cli", "health"],
        cwd=REPO,
        env={**os.environ, "KVMMU_SERVER": "127.0.0.1:70000"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "'--server'" in proc.stderr


@pytest.mark.parametrize("option", ["--tls-ca", "--tls-cert", "--tls-key"])
def test_tls_files_must_be_pem(offline: Cli, option: str, tmp_path: Path) -> None:
    not_pem = tmp_path / "hostname"
    not_pem.write_text("myhost\n")
    line = offline.fails(2, option, str(not_pem), "vm", "list")
    assert line == (
        f"kvmmu: Invalid value for '{option}': {not_pem} is not a PEM file: it has no "
        "'-----BEGIN' line (see 'kvmmu --help')"
    )


def test_tls_cert_needs_its_key(offline: Cli, tmp_path: Path) -> None:
    cert = tmp_path / "client.crt"
    cert.write_bytes(PEM)
    line = offline.fails(2, "--tls-cert", str(cert), "host")
    assert "--tls-cert and --tls-key go together" in line


# --- smaller usage errors -------------------------------------------------------------


def test_empty_vm_id_is_refused(offline: Cli) -> None:
    line = offline.fails(2, "vm", "create", "--id", "")
    assert line.startswith("kvmmu vm create: Invalid value for '--id': must not be empty")


@pytest.mark.parametrize("flags", [["--private", "--shared"], []])
def test_attributes_takes_exactly_one_of_private_and_shared(offline: Cli, flags: list[str]) -> None:
    line = offline.fails(2, "attributes", "vm1", "--start", "0", "--end", "4K", *flags)
    assert "give exactly one of --private and --shared" in line


# --- error-code labels ----------------------------------------------------------------


def test_every_pferr_bit_of_the_model_has_a_label() -> None:
    known = {v for k, v in vars(constants).items() if k.startswith("PFERR_")}
    assert {bit for bit, _ in constants.ERROR_CODE_LABELS} == known
    assert constants.error_code_label(0x2000000000002) == "W|PRIVATE"
    assert constants.error_code_label(0) == "-"
    assert constants.error_code_label(1 << 60 | 1) == "P|0x1000000000000000"


def test_events_name_must_be_an_event_the_server_sends(offline: Cli) -> None:
    line = offline.fails(2, "events", "vm1", "--name", "bogus_event")
    assert "'bogus_event' is not one of" in line and "'kvm_mmu_set_spte'" in line
