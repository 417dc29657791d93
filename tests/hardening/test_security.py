"""TLS, mutual TLS and bearer tokens against a real kvmmu-server, with certificates
made in the test; the listen policy; tokens never logged."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import given, settings
from hypothesis import strategies as st

from client._transport import TlsConfig
from client.client import connect
from client.errors import ServerUnreachable, Unauthenticated
from kvmmu.v1 import host_pb2, service_pb2_grpc, spte_pb2, vm_pb2
from server.auth import UNAUTHENTICATED_MESSAGE, bearer_token
from server.security import (
    Security,
    SecurityError,
    TlsFiles,
    is_loopback,
    listen_refusal,
    listen_warnings,
    load_tokens,
    token_digest,
)
from tests.hardening.certs import Pki, make_pki
from tests.server.conftest import REPO, ServerProcess, start_server

pytestmark = pytest.mark.timeout(60)
Code = grpc.StatusCode
TOKEN = "kvmmu-test-token-0123456789abcdef"
SECOND_TOKEN = "rotated-token-ZYXWVUTSRQPONMLKJI"


@dataclass
class Secured:
    server: ServerProcess
    pki: Pki

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def channel(self, *, cert: bool = True, ca: Path | None = None) -> grpc.Channel:
        pair = self.pki.client
        creds = grpc.ssl_channel_credentials(
            root_certificates=(ca or self.pki.ca).read_bytes(),
            private_key=pair.key.read_bytes() if cert else None,
            certificate_chain=pair.cert.read_bytes() if cert else None,
        )
        return grpc.secure_channel(self.target, creds)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tokens") / "tokens"
    path.write_text(f"# kvmmu test tokens\n{TOKEN}\n\n{SECOND_TOKEN}\n")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def mtls(pki: Pki, token_file: Path) -> Iterator[Secured]:
    """Mutual TLS and a token, logging every request (to prove tokens stay out of logs)."""
    srv = start_server(
        "--tls-cert", str(pki.server.cert),
        "--tls-key", str(pki.server.key),
        "--tls-client-ca", str(pki.ca),
        "--token-file", str(token_file),
        "--log-level", "debug",
    )  # fmt: skip
    yield Secured(srv, pki)
    assert srv.stop() == 0
    log = srv.log.read_text()
    assert TOKEN not in log and SECOND_TOKEN not in log
    assert "wrong-token" not in log


@pytest.fixture(scope="module")
def tls_only(pki: Pki) -> Iterator[Secured]:
    """TLS without client certificates, tokens given by environment variables."""
    env = {"KVMMU_TLS_CERT": str(pki.server.cert), "KVMMU_TLS_KEY": str(pki.server.key)}
    srv = start_server("--log-level", "warning", env=env)
    yield Secured(srv, pki)
    assert srv.stop() == 0


def stub_of(channel: grpc.Channel) -> service_pb2_grpc.MmuServiceStub:
    return service_pb2_grpc.MmuServiceStub(channel)


def auth(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


def code_of(call: object, *args: object, **kwargs: object) -> tuple[Code, str]:
    try:
        result = call(*args, **kwargs)  # type: ignore[operator]
        if hasattr(result, "__iter__") and not hasattr(result, "ByteSize"):
            list(result)
    except grpc.RpcError as err:
        assert isinstance(err, grpc.Call)
        return err.code(), err.details() or ""
    return Code.OK, ""


# --- TLS and mutual TLS -------------------------------------------------------------


def test_banner_says_how_clients_connect(mtls: Secured, tls_only: Secured) -> None:
    assert any("mutual TLS), bearer token required" in line for line in mtls.server.banner)
    assert any(line.strip().endswith("TLS, no token") for line in tls_only.server.banner)


def test_tls_serves_clients_that_trust_the_ca(tls_only: Secured) -> None:
    with tls_only.channel(cert=False) as channel:
        assert stub_of(channel).GetHost(host_pb2.GetHostRequest()).name == "host"
    client = connect(tls_only.target, timeout=10, tls=TlsConfig(ca=tls_only.pki.ca))
    with client:
        assert client.get_host().profile == "hostProfiles/intel-ept"


def test_tls_refuses_plaintext_and_untrusted_servers(tls_only: Secured) -> None:
    with grpc.insecure_channel(tls_only.target) as channel:
        code, _ = code_of(stub_of(channel).GetHost, host_pb2.GetHostRequest(), timeout=5)
        assert code == Code.UNAVAILABLE
    with tls_only.channel(cert=False, ca=tls_only.pki.other_ca) as channel:
        code, _ = code_of(stub_of(channel).GetHost, host_pb2.GetHostRequest(), timeout=5)
        assert code == Code.UNAVAILABLE  # the server's certificate is not signed by that CA


def test_mutual_tls_requires_a_client_certificate_from_the_ca(mtls: Secured) -> None:
    pki = mtls.pki
    good = TlsConfig(ca=pki.ca, cert=pki.client.cert, key=pki.client.key)
    with connect(mtls.target, timeout=10, tls=good, token=TOKEN) as client:
        assert client.health() == "SERVING" or client.health()
        assert client.get_host().profile == "hostProfiles/intel-ept"
    rogue = TlsConfig(ca=pki.ca, cert=pki.rogue_client.cert, key=pki.rogue_client.key)
    for tls in (TlsConfig(ca=pki.ca), rogue):
        client = connect(mtls.target, timeout=5, tls=tls, token=TOKEN)
        with client, pytest.raises(ServerUnreachable):
            client.get_host()


# --- bearer tokens ------------------------------------------------------------------


def test_every_method_needs_the_token_and_learns_nothing_without(mtls: Secured) -> None:
    with mtls.channel() as channel:
        stub = stub_of(channel)
        vm = stub.CreateVm(vm_pb2.CreateVmRequest(vm_id="secret-vm"), metadata=auth(TOKEN)).name
        bad_headers: list[tuple[tuple[str, str], ...]] = [
            (),
            auth("wrong-token-0123456789abcdef"),
            auth(TOKEN[:-1]),
            auth(TOKEN + "x"),
            (("authorization", TOKEN),),  # no scheme
            (("authorization", f"Basic {TOKEN}"),),
            (("authorization", "Bearer "),),
            (("authorization", f"Bearer {TOKEN}"), ("authorization", f"Bearer {TOKEN}")),
            (("x-token", TOKEN),),
        ]
        calls = [
            (stub.GetVm, vm_pb2.GetVmRequest(name=vm)),  # exists
            (stub.GetVm, vm_pb2.GetVmRequest(name="vms/none")),  # does not
            (stub.DeleteVm, vm_pb2.DeleteVmRequest(name=vm)),
            (stub.ListVms, vm_pb2.ListVmsRequest()),
            (stub.StreamSptes, spte_pb2.StreamSptesRequest(name=vm)),
            (stub.GetHost, host_pb2.GetHostRequest(name="not a name")),  # invalid
        ]
        for headers in bad_headers:
            for call, request in calls:
                assert code_of(call, request, metadata=headers) == (
                    Code.UNAUTHENTICATED,
                    UNAUTHENTICATED_MESSAGE,
                ), (call, headers)
            # Garbage bytes and unknown methods: the same answer, never parsed or routed.
            garbage = channel.unary_unary("/kvmmu.v1.MmuService/CreateVm")
            assert code_of(garbage, b"\xff\xff\xff", metadata=headers)[0] == Code.UNAUTHENTICATED
            unknown = channel.unary_unary("/kvmmu.v1.MmuService/NoSuchMethod")
            assert code_of(unknown, b"", metadata=headers)[0] == Code.UNAUTHENTICATED
        # The VM survived every unauthenticated DeleteVm; both tokens work (rotation).
        for token in (TOKEN, SECOND_TOKEN):
            got = stub.GetVm(vm_pb2.GetVmRequest(name=vm), metadata=auth(token))
            assert got.name == vm
        lower = (("authorization", f"bearer {SECOND_TOKEN}"),)  # the scheme is case-blind
        assert code_of(stub.GetVm, vm_pb2.GetVmRequest(name=vm), metadata=lower)[0] == Code.OK
        unknown = channel.unary_unary("/kvmmu.v1.MmuService/NoSuchMethod")
        assert code_of(unknown, b"", metadata=auth(TOKEN))[0] == Code.UNIMPLEMENTED
        stub.DeleteVm(vm_pb2.DeleteVmRequest(name=vm), metadata=auth(TOKEN))


def test_health_is_open_and_reflection_needs_the_token(mtls: Secured) -> None:
    with mtls.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        answer = health.Check(health_pb2.HealthCheckRequest(service="kvmmu.v1.MmuService"))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        code, _ = code_of(lambda **kw: list(reflect.ServerReflectionInfo(iter([request]), **kw)))
        assert code == Code.UNAUTHENTICATED
        answers = list(reflect.ServerReflectionInfo(iter([request]), metadata=auth(TOKEN)))
        names = {s.name for s in answers[0].list_services_response.service}
        assert "kvmmu.v1.MmuService" in names


def test_client_library_maps_a_bad_token_to_unauthenticated(mtls: Secured) -> None:
    pki = mtls.pki
    tls = TlsConfig(ca=pki.ca, cert=pki.client.cert, key=pki.client.key)
    for token in (None, "wrong-token-0123456789abcdef"):
        with connect(mtls.target, timeout=10, tls=tls, token=token) as client:
            with pytest.raises(Unauthenticated) as info:
                list(client.list_vms())
            assert TOKEN not in str(info.value)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("KVMMU_")}
    return subprocess.run(
        [sys.executable, "-m", "client.cli", *args],
        cwd=REPO,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_with_mutual_tls_and_a_token_from_flag_or_environment(mtls: Secured) -> None:
    pki = mtls.pki
    tls = [
        "--server", mtls.target,
        "--tls-ca", str(pki.ca),
        "--tls-cert", str(pki.client.cert),
        "--tls-key", str(pki.client.key),
    ]  # fmt: skip
    by_flag = run_cli(*tls, "--token", TOKEN, "--json", "host")
    assert by_flag.returncode == 0, by_flag.stderr
    assert '"hostProfiles/intel-ept"' in by_flag.stdout
    by_env = run_cli(*tls, "--json", "host", env={"KVMMU_TOKEN": SECOND_TOKEN})
    assert by_env.returncode == 0, by_env.stderr
    missing = run_cli(*tls, "host")
    assert missing.returncode == 1
    assert "unauthenticated" in missing.stderr and "Traceback" not in missing.stderr
    port = mtls.target.rpartition(":")[2]
    for server in (mtls.target, f"localhost:{port}"):  # localhost: ::1 is refused first
        no_cert = run_cli(
            "--server", server, "--tls-ca", str(pki.ca), "--token", TOKEN, "vm", "list"
        )  # fmt: skip
        assert no_cert.returncode == 3 and "Traceback" not in no_cert.stderr
        assert "--tls-cert/--tls-key" in no_cert.stderr, no_cert.stderr


def test_cli_reports_a_failed_handshake_in_one_line_of_its_own(pki: Pki) -> None:
    plaintext = start_server("--state-dir", "none", "--log-level", "warning")
    try:
        result = run_cli("--server", plaintext.address, "--tls-ca", str(pki.ca), "host")
    finally:
        assert plaintext.stop() == 0
    assert result.returncode == 3
    # gRPC's C core logs each failed handshake to stderr unless told not to.
    assert result.stderr.startswith("kvmmu: ") and result.stderr.count("\n") == 1, result.stderr
    assert "--tls-ca" in result.stderr


# --- the listen policy and start-up checks --------------------------------------------


def test_loopback_addresses() -> None:
    for address in ("127.0.0.1:1", "127.8.9.10:1", "[::1]:1", "localhost:1", "unix:/tmp/k.sock"):
        assert is_loopback(address), address
    for address in ("0.0.0.0:1", "[::]:1", ":1", "10.1.2.3:1", "192.0.2.7:1"):
        assert not is_loopback(address), address


def test_listen_policy_and_warnings(tmp_path: Path) -> None:
    plain = Security()
    assert listen_refusal("127.0.0.1:50051", plain) is None
    refusal = listen_refusal("0.0.0.0:50051", plain)
    assert refusal is not None and "--insecure" in refusal and "--token-file" in refusal
    token = Security(token_digests=frozenset({token_digest(TOKEN)}))
    tls = Security(tls=TlsFiles(tmp_path / "c", tmp_path / "k"))
    for allowed in (token, tls, Security(insecure=True)):
        assert listen_refusal("0.0.0.0:50051", allowed) is None
    assert "in clear" in listen_warnings("0.0.0.0:1", token)[0]
    assert "no client authentication" in listen_warnings("0.0.0.0:1", tls)[0]
    assert "plaintext" in listen_warnings("0.0.0.0:1", Security(insecure=True))[0]
    assert listen_warnings("127.0.0.1:1", token) == []
    assert "metrics" in listen_warnings("127.0.0.1:1", token, None, "0.0.0.0:9100")[0]
    assert "Security(" in repr(token) and "digest" not in repr(token)


def test_token_checks_are_exact() -> None:
    security = Security(token_digests=frozenset({token_digest(TOKEN), token_digest(SECOND_TOKEN)}))
    assert security.token_ok(TOKEN.encode()) and security.token_ok(SECOND_TOKEN.encode())
    for wrong in (b"", TOKEN[:-1].encode(), (TOKEN + " ").encode(), TOKEN.upper().encode()):
        assert not security.token_ok(wrong)
    assert bearer_token((("authorization", f"Bearer  {TOKEN} "),)) == TOKEN.encode()
    assert bearer_token((("authorization", "Bearer"),)) is None
    assert bearer_token(None) is None


def test_token_file_rules(tmp_path: Path) -> None:
    path = tmp_path / "t"
    for text, message in (
        ("", "no token"),
        ("# only a comment\n", "no token"),
        ("short\n", "at least 16"),
        ("spaces are not token chars\n", "RFC 6750"),
    ):
        path.write_text(text)
        with pytest.raises(SecurityError, match=message):
            load_tokens(path)
    with pytest.raises(SecurityError, match="--token-file"):
        load_tokens(tmp_path / "missing")


def server_exit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server.main", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("KVMMU_")},
    )


def test_server_refuses_a_public_plaintext_listener_and_says_why() -> None:
    result = server_exit("--listen", "0.0.0.0:0")
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0:0" in result.stderr and "--insecure" in result.stderr
    assert "Traceback" not in result.stderr


def test_public_listener_starts_with_a_token_or_insecure_and_warns(token_file: Path) -> None:
    for args, warning in (
        (["--token-file", str(token_file)], "bearer tokens travel in clear"),
        (["--insecure"], "--insecure: serving 0.0.0.0:0 in plaintext"),
    ):
        srv = start_server("--listen", "0.0.0.0:0", *args, "--log-level", "warning")
        try:
            with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
                code, _ = code_of(stub_of(channel).GetHost, host_pb2.GetHostRequest(), timeout=5)
                assert code == (Code.UNAUTHENTICATED if "--token-file" in args else Code.OK)
        finally:
            assert srv.stop() == 0
        assert warning in srv.log.read_text()


def test_bad_security_flags_are_usage_errors(pki: Pki, tmp_path: Path) -> None:
    weak = tmp_path / "weak"
    weak.write_text("abc\n")
    cases = [
        (["--tls-cert", str(pki.server.cert)], "--tls-cert and --tls-key go together"),
        (["--tls-client-ca", str(pki.ca)], "needs --tls-cert"),
        (["--tls-cert", str(tmp_path / "no.crt"), "--tls-key", str(pki.server.key)], "--tls-cert"),
        (["--tls-cert", str(pki.server.key), "--tls-key", str(pki.server.key)], "CERTIFICATE"),
        (["--token-file", str(weak)], "at least 16"),
        (["--tls-cert", str(pki.server.cert), "--tls-key", str(pki.client.key)], "usable pair"),
    ]
    for args, message in cases:
        result = server_exit("--listen", "127.0.0.1:0", *args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr


def test_a_token_file_others_can_read_is_warned_about(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(TOKEN + "\n")
    path.chmod(0o644)
    srv = start_server("--token-file", str(path), "--log-level", "warning")
    assert srv.stop() == 0
    assert "can be read by other users" in srv.log.read_text()


def test_a_token_that_cannot_be_a_header_is_refused_by_the_client() -> None:
    for bad in ("two words", "tab\there", "é-not-ascii", "new\nline"):
        with pytest.raises(ValueError, match="printable ASCII"):
            connect("127.0.0.1:1", token=bad)
    result = run_cli("--token", "bad token", "vm", "list")
    assert result.returncode == 2 and "printable ASCII" in result.stderr
    assert "Traceback" not in result.stderr


HEADER_CHARS = st.characters(min_codepoint=0x21, max_codepoint=0x7E)


def test_fuzzed_authorization_headers_are_all_unauthenticated(mtls: Secured) -> None:
    with mtls.channel() as channel:
        stub = stub_of(channel)

        @settings(max_examples=300, deadline=None, database=None)
        @given(
            scheme=st.sampled_from(["Bearer ", "bearer ", "BEARER  ", "Basic ", "", "Bearer"]),
            token=st.one_of(
                st.text(HEADER_CHARS, max_size=80),
                st.just(TOKEN).map(lambda t: t[:-1]),
                st.builds(lambda c: TOKEN + c, HEADER_CHARS),
                st.just(TOKEN.swapcase()),
            ),
        )
        def check(scheme: str, token: str) -> None:
            if token in (TOKEN, SECOND_TOKEN) and scheme.strip().lower() == "bearer":
                return  # the real thing, tested above
            headers = (("authorization", scheme + token),)
            code, message = code_of(stub.ListVms, vm_pb2.ListVmsRequest(), metadata=headers)
            assert (code, message) == (Code.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)

        check()
