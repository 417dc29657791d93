"""Retries (UNAVAILABLE, idempotent reads only), deadlines, the bearer token and TLS,
against in-process gRPC servers with scripted behaviour."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

import client
from tests.client.conftest import Fake, Pki, ScriptedService, serve

FAST = client.RetryPolicy(attempts=4, initial_backoff=0.01, max_backoff=0.05)


def test_reads_are_retried_on_unavailable(fake: Callable[..., Fake]) -> None:
    server = fake(unavailable=2)
    with client.connect(server.address, retry=FAST) as kvm:
        assert kvm.get_vm("vm1").vm_id == "vm1"
    assert server.service.calls["GetVm"] == 3


def test_writes_are_never_retried(fake: Callable[..., Fake]) -> None:
    server = fake(unavailable=1)
    with client.connect(server.address, retry=FAST) as kvm:
        with pytest.raises(client.Unavailable, match="warming up"):
            kvm.create_vm(vm_id="vm1")
        assert server.service.calls["CreateVm"] == 1
        assert kvm.create_vm(vm_id="vm1").vm_id == "vm1"


def test_retries_stop_after_the_policy_attempts(fake: Callable[..., Fake]) -> None:
    server = fake(unavailable=5)
    with client.connect(server.address, retry=FAST) as kvm, pytest.raises(client.Unavailable):
        kvm.get_vm("vm1")
    assert server.service.calls["GetVm"] == 4
    with (
        client.connect(server.address, retry=client.NO_RETRY) as kvm,
        pytest.raises(client.Unavailable),
    ):
        kvm.get_vm("vm1")
    assert server.service.calls["GetVm"] == 5


def test_retries_stay_within_the_deadline(fake: Callable[..., Fake]) -> None:
    server = fake(unavailable=100)
    slow = client.RetryPolicy(attempts=50, initial_backoff=0.2, multiplier=1.0)
    start = time.monotonic()
    with (
        client.connect(server.address, retry=slow, timeout=0.5) as kvm,
        pytest.raises(client.Unavailable),
    ):
        kvm.get_vm("vm1")
    assert time.monotonic() - start < 1.5
    assert server.service.calls["GetVm"] <= 3


def test_every_call_has_a_default_deadline(fake: Callable[..., Fake]) -> None:
    server = fake(delay=1.0)
    with client.connect(server.address, timeout=0.2) as kvm:
        start = time.monotonic()
        with pytest.raises(client.DeadlineExceeded):
            kvm.get_host()
        assert time.monotonic() - start < 0.9
        assert kvm.get_host(timeout=5).name == "host"  # overridden per call
        assert kvm.timeout == 0.2


def test_token_is_sent_as_bearer_metadata(fake: Callable[..., Fake]) -> None:
    server = fake()
    with client.connect(server.address, token="s3cret") as kvm:
        kvm.get_vm("vm1")
        kvm.create_vm(vm_id="vm2")
    assert [m.get("authorization") for m in server.service.metadata] == ["Bearer s3cret"] * 2
    with client.connect(server.address) as kvm:
        kvm.get_vm("vm1")
    assert "authorization" not in server.service.metadata[-1]


def test_tls_with_a_ca_and_mutual_tls(pki: Pki) -> None:
    key, cert = pki.key.read_bytes(), pki.cert.read_bytes()
    service = ScriptedService()
    creds = grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=cert, require_client_auth=True
    )
    server, address = serve(service, creds)
    try:
        tls = client.TlsConfig(ca=pki.cert, cert=str(pki.cert), key=key)
        with client.connect(address, tls=tls, token="t") as kvm:
            assert kvm.get_vm("vm1").vm_id == "vm1"
        assert service.metadata[-1]["authorization"] == "Bearer t"
        no_client_cert = client.TlsConfig(ca=pki.cert)
        with (
            client.connect(address, tls=no_client_cert, retry=client.NO_RETRY) as kvm,
            pytest.raises(client.Unavailable),
        ):
            kvm.get_vm("vm1", timeout=5)
    finally:
        server.stop(0)


def test_tls_config_needs_cert_and_key_together(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="certificate needs its key"):
        client.connect("127.0.0.1:1", tls=client.TlsConfig(cert=pki.cert))
