"""Health, reflection, limits, concurrency, metrics, flags, and a small fuzz."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import urllib.request

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import FieldDescriptor
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from kvmmu.v1 import (
    common_pb2,
    events_pb2,
    fault_pb2,
    host_pb2,
    memslot_pb2,
    service_pb2,
    service_pb2_grpc,
    spte_pb2,
    vm_pb2,
)
from server.app import create_server
from server.config import Limits, ServerConfig
from server.metrics import parse_metrics_address
from tests.server.conftest import REPO, add_slot, create_vm, fails, start_server

pytestmark = pytest.mark.timeout(60)
Code = grpc.StatusCode
SERVICE = service_pb2.DESCRIPTOR.services_by_name["MmuService"]


def test_health_serving(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "kvmmu.v1.MmuService"):
        response = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_and_describes_the_service(channel):
    db = ProtoReflectionDescriptorDatabase(channel)
    services = set(db.get_services())
    assert {"kvmmu.v1.MmuService", "grpc.health.v1.Health"} <= services
    pool = descriptor_pool.DescriptorPool(db)
    service = pool.FindServiceByName("kvmmu.v1.MmuService")
    assert len(service.methods) == 22
    assert service.methods_by_name["StreamSptes"].output_type.full_name == (
        "kvmmu.v1.StreamSptesResponse"
    )


def test_concurrent_clients_on_one_vm_lose_nothing(server):
    threads, per_thread = 8, 60
    with server.channel() as channel:
        stub = service_pb2_grpc.MmuServiceStub(channel)
        vm = create_vm(stub)
        add_slot(stub, vm, size=1 << 32)
        errors: list[BaseException] = []

        def worker(t: int) -> None:
            try:
                with server.channel() as own:
                    mine = service_pb2_grpc.MmuServiceStub(own)
                    for i in range(per_thread):
                        gpa = ((t * per_thread + i) * 0x201) << 12  # spread over tables
                        res = mine.Fault(fault_pb2.FaultRequest(name=vm, gpa=gpa, error_code=2))
                        assert res.outcome == common_pb2.FAULT_OUTCOME_FIXED
                    batch = [((1_000_000 + t * 50 + i) << 12) for i in range(50)]
                    mine.BatchFault(
                        fault_pb2.BatchFaultRequest(name=vm, gpas=batch, shared_error_code=2)
                    )
            except BaseException as exc:  # reported below
                errors.append(exc)

        pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        assert not errors, errors
        total = threads * (per_thread + 50)
        stats = stub.GetVmStats(vm_pb2.GetVmStatsRequest(name=f"{vm}/stats"))
        assert (stats.pf_taken, stats.pf_fixed, stats.pages_4k) == (total, total, total)
        gfns = [g for c in stub.StreamSptes(spte_pb2.StreamSptesRequest(name=vm)) for g in c.gfns]
        expected = {(t * per_thread + i) * 0x201 for t in range(threads) for i in range(per_thread)}
        expected |= {1_000_000 + t * 50 + i for t in range(threads) for i in range(50)}
        assert sorted(gfns) == sorted(expected)


# --- limits --------------------------------------------------------------------


@pytest.fixture(scope="module")
def tight(tight_server):
    with tight_server.channel() as channel:
        yield service_pb2_grpc.MmuServiceStub(channel)


def quota_subject(failure) -> str:
    assert failure.code == Code.RESOURCE_EXHAUSTED
    return str(failure.detail(error_details_pb2.QuotaFailure).violations[0].subject)


def test_limit_max_vms(tight):
    names = [create_vm(tight) for _ in range(3)]
    try:
        assert quota_subject(fails(create_vm, tight)) == "max_vms"
    finally:
        for name in names:
            tight.DeleteVm(vm_pb2.DeleteVmRequest(name=name))
    tight.DeleteVm(vm_pb2.DeleteVmRequest(name=create_vm(tight)))


def test_limit_memslots_batch_and_tables(tight):
    # Tracing keeps BatchFault on the model's scalar path: its vectorised path checks the
    # table limit differently at the boundary (reported to the model's owner).
    vm = create_vm(tight, tracing_enabled=True)
    try:
        add_slot(tight, vm, slot=0, gpa=0, size=1 << 30)
        add_slot(tight, vm, slot=1, gpa=1 << 30, size=1 << 30)
        failure = fails(add_slot, tight, vm, slot=2, gpa=2 << 30, size=1 << 30)
        assert quota_subject(failure) == "max_memslots_per_vm"
        assert failure.info.metadata["limit"] == "max_memslots_per_vm"
        big = fault_pb2.BatchFaultRequest(name=vm, gpas=[0x1000] * 65)
        assert quota_subject(fails(tight.BatchFault, big)) == "max_batch_size"
        # 9 tables: a fault needs root_level (4) free ones (mmu_topup_memory_caches);
        # the root path (4) for GPA 0, then 2 more for the second GiB, then none.
        tight.Fault(fault_pb2.FaultRequest(name=vm, gpa=0x1000, error_code=2))
        tight.Fault(fault_pb2.FaultRequest(name=vm, gpa=(1 << 30) + 0x1000, error_code=2))
        third = fault_pb2.FaultRequest(name=vm, gpa=0x40200000 + (1 << 30), error_code=2)
        assert quota_subject(fails(tight.Fault, third)) == "max_tables_per_vm"
        # The fast path needs no page tables; a fault that reaches the map does.
        batch = tight.BatchFault(
            fault_pb2.BatchFaultRequest(name=vm, gpas=[0x1000, third.gpa], shared_error_code=3)
        )
        assert list(batch.outcomes) == [
            common_pb2.FAULT_OUTCOME_SPURIOUS,
            common_pb2.FAULT_OUTCOME_ENOMEM,
        ]
        stats = tight.GetVmStats(vm_pb2.GetVmStatsRequest(name=f"{vm}/stats"))
        assert stats.pages_4k == 2 and stats.direct_tables == 6
    finally:
        tight.DeleteVm(vm_pb2.DeleteVmRequest(name=vm))


def test_limit_page_size_is_capped(tight):
    page = tight.ListHostProfiles(host_pb2.ListHostProfilesRequest(page_size=100))
    assert len(page.host_profiles) == 5 and page.next_page_token
    assert len(tight.ListHostProfiles(host_pb2.ListHostProfilesRequest()).host_profiles) == 2


def test_limit_concurrent_streams(tight):
    vm = create_vm(tight)
    try:
        request = events_pb2.WatchEventsRequest(name=vm, follow=True)
        open_streams = [tight.WatchEvents(request, timeout=30) for _ in range(2)]
        for stream in open_streams:  # subscribed: the server holds a stream slot for each
            assert dict(stream.initial_metadata())["kvmmu-first-sequence"] == "1"
        failure = fails(lambda: list(tight.WatchEvents(request, timeout=10)))
        assert quota_subject(failure) == "max_concurrent_streams"
        for stream in open_streams:
            stream.cancel()
        for _ in range(50):  # the server notices the cancellations promptly
            try:
                request = spte_pb2.StreamSptesRequest(name=vm)
                assert list(tight.StreamSptes(request, timeout=10)) == []
                break
            except grpc.RpcError as err:
                assert err.code() == Code.RESOURCE_EXHAUSTED
                threading.Event().wait(0.1)
        else:
            pytest.fail("stream slots were not released")
    finally:
        tight.DeleteVm(vm_pb2.DeleteVmRequest(name=vm))


def test_limit_inflight_rpcs_refuses_calls_beyond_it_before_reading_them() -> None:
    # In process, to set the limit equal to the streams limit (the CLI refuses that):
    # two held streams then fill every in-flight slot, with no timing involved.
    limits = Limits(max_concurrent_streams=2, max_inflight_rpcs=2)
    server, port = create_server("127.0.0.1:0", config=ServerConfig(limits=limits))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = service_pb2_grpc.MmuServiceStub(channel)
            vm = create_vm(stub)
            request = events_pb2.WatchEventsRequest(name=vm, follow=True)
            held = [stub.WatchEvents(request, timeout=30) for _ in range(2)]
            for stream in held:
                assert dict(stream.initial_metadata())["kvmmu-first-sequence"] == "1"
            with pytest.raises(grpc.RpcError) as refused:  # gRPC's own refusal: no details
                stub.GetHost(host_pb2.GetHostRequest(), timeout=10)
            assert refused.value.code() == Code.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
            held[0].cancel()
            for _ in range(50):  # the server notices the cancellation promptly
                try:
                    assert stub.GetHost(host_pb2.GetHostRequest(), timeout=10).name == "host"
                    break
                except grpc.RpcError as err:
                    assert err.code() == Code.RESOURCE_EXHAUSTED
                    threading.Event().wait(0.1)
            else:
                pytest.fail("the in-flight slot was not released")
            held[1].cancel()
    finally:
        server.stop(grace=1)


def server_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`kvmmu-server ARGS` run to its end (usage errors exit before serving)."""
    return subprocess.run(
        [sys.executable, "-m", "server.main", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_keeps_room_for_short_calls_beside_streams() -> None:
    for flags in (["--workers", "4"], ["--max-inflight-rpcs", "4"]):
        result = server_cli("--max-concurrent-streams", "4", *flags)
        assert result.returncode == 2
        assert f"{flags[0]} must exceed --max-concurrent-streams" in result.stderr


# --- fuzz ----------------------------------------------------------------------

ALLOWED = {
    Code.OK,
    Code.INVALID_ARGUMENT,
    Code.NOT_FOUND,
    Code.ALREADY_EXISTS,
    Code.FAILED_PRECONDITION,
    Code.RESOURCE_EXHAUSTED,
}
MESSAGES = {
    m.name: getattr(mod, m.input_type.name)
    for m in SERVICE.methods
    for mod in (common_pb2, events_pb2, fault_pb2, host_pb2, memslot_pb2, spte_pb2, vm_pb2)
    if hasattr(mod, m.input_type.name)
}
INTS = [0, 1, 2, 3, 5, 7, 12, 63, 64, 512, 4096, 0x1001, 1 << 20, 1 << 30, 1 << 52, 1 << 63]


def random_message(rng: random.Random, msg, vm: str, depth: int = 0) -> None:
    strings = ["", vm, f"{vm}/memslots/0", f"{vm}/stats", "vms/x", "host", "hostProfiles/amd-npt"]
    strings += ["\x00", "vms/" + "a" * 300, "hostProfiles/", "kvm_mmu_set_spte", "*"]
    for field in msg.DESCRIPTOR.fields:
        if rng.random() < 0.4:
            continue
        repeated = field.is_repeated
        for _ in range(rng.randint(1, 5) if repeated else 1):
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                if depth > 3 or field.message_type.full_name.startswith("google."):
                    continue
                target = getattr(msg, field.name).add() if repeated else getattr(msg, field.name)
                target.SetInParent()
                random_message(rng, target, vm, depth + 1)
                continue
            if field.type == FieldDescriptor.TYPE_STRING:
                value = rng.choice(strings)
            elif field.type == FieldDescriptor.TYPE_BOOL:
                value = rng.random() < 0.5
            elif field.type == FieldDescriptor.TYPE_ENUM:
                value = rng.choice([0, 1, 2, 3, 6, 9, 100])
            elif field.type == FieldDescriptor.TYPE_INT32:
                value = rng.choice([-5, 0, 1, 3, 1000, 2**31 - 1])
            elif field.type == FieldDescriptor.TYPE_UINT32:
                value = rng.choice([v for v in INTS if v < 1 << 32] + [2**32 - 1])
            else:
                value = rng.choice([*INTS, 2**64 - 1])
            if repeated:
                getattr(msg, field.name).append(value)
            else:
                setattr(msg, field.name, value)


def call_raw(channel, method: str, payload: bytes) -> Code:
    path = f"/kvmmu.v1.MmuService/{method}"
    try:
        if SERVICE.methods_by_name[method].server_streaming:
            for _ in channel.unary_stream(path)(payload, timeout=10):
                pass
        else:
            channel.unary_unary(path)(payload, timeout=10)
    except grpc.RpcError as err:
        return err.code()
    return Code.OK


def test_fuzz_never_internal_and_server_survives(server, stub):
    rng = random.Random(5)
    vm = create_vm(stub, tracing_enabled=True)
    add_slot(stub, vm, size=1 << 30)
    codes: dict[str, set[Code]] = {}
    with server.channel() as channel:
        for round_ in range(400):
            method = rng.choice(list(MESSAGES))
            if round_ % 4 == 0:
                payload = rng.randbytes(rng.randint(1, 40))
            else:
                msg = MESSAGES[method]()
                random_message(rng, msg, vm)
                payload = msg.SerializeToString()
            code = call_raw(channel, method, payload)
            codes.setdefault(method, set()).add(code)
            assert code in ALLOWED, (method, code, payload)
    assert len(codes) >= 20
    health = health_pb2_grpc.HealthStub(server.channel())
    assert health.Check(health_pb2.HealthCheckRequest()).status == 1
    assert "internal error" not in server.log.read_text()


# --- flags, environment, metrics -------------------------------------------------


def test_help_documents_flags_and_env():
    out = subprocess.run(
        [sys.executable, "-m", "server.main", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for flag in (
        "--listen",
        "--profile",
        "--host-set",
        "--state-dir",
        "--max-vms",
        "--max-batch-size",
        "--max-tables-per-vm",
        "--log-level",
        "--metrics-listen",
    ):
        assert flag in out
    assert "KVMMU_LISTEN" in out and "127.0.0.1:50051" in out


def test_bad_host_override_is_a_usage_error():
    result = server_cli("--host-set", "phys_bits=many")
    assert result.returncode == 2 and "phys_bits" in result.stderr


def test_env_profile_overrides_state_dir_and_metrics(tmp_path):
    srv = start_server(
        "--host-set", "nx_huge_pages=true",
        "--metrics-listen", "127.0.0.1:0",
        "--state-dir", str(tmp_path / "state"),
        env={"KVMMU_PROFILE": "amd-npt"},
    )  # fmt: skip
    try:
        banner = "".join(srv.banner)
        assert f"state in {tmp_path / 'state'} (format 1, durability process" in banner
        assert "new state directory" in banner
        with srv.channel() as channel:
            stub = service_pb2_grpc.MmuServiceStub(channel)
            host = stub.GetHost(host_pb2.GetHostRequest())
            assert host.profile == "hostProfiles/amd-npt"
            assert list(host.overridden_fields) == ["nx_huge_pages"]
            vm = create_vm(stub)
            add_slot(stub, vm)
            stub.BatchFault(fault_pb2.BatchFaultRequest(name=vm, gpas=[0x1000, 0x2000]))
            line = next(x for x in srv.banner if "metrics on" in x)
            url = "http://" + line.split("metrics on ")[1].strip()
            with urllib.request.urlopen(url, timeout=10) as response:
                text = response.read().decode()
        assert 'kvmmu_rpc_requests_total{code="OK",method="CreateVm"} 1.0' in text
        assert "kvmmu_rpc_latency_seconds_bucket" in text
        vm_id = vm.split("/")[1]
        assert f'kvmmu_vm_pages_4k{{vm="{vm_id}"}} 2.0' in text
        assert (tmp_path / "state" / "kvmmu-state.json").exists()
    finally:
        assert srv.stop() == 0


def test_numpy_gpas_roundtrip(stub):
    vm = create_vm(stub)
    add_slot(stub, vm)
    gpas = np.arange(1, 5, dtype=np.uint64) << np.uint64(12)
    res = stub.BatchFault(fault_pb2.BatchFaultRequest(name=vm, gpas=gpas.tolist()))
    assert list(res.gfns) == [1, 2, 3, 4]


def test_a_host_without_the_tdp_mmu_runs_no_vms_and_says_why():
    # tdp_mmu off: KVM would use the shadow MMU, which the model does not implement.
    srv = start_server("--host-set", "tdp_mmu=false", "--state-dir", "none")
    try:
        with srv.channel() as channel:
            stub = service_pb2_grpc.MmuServiceStub(channel)
            host = stub.GetHost(host_pb2.GetHostRequest())
            assert not host.config.tdp_mmu
            assert all(not t.supported and "shadow MMU" in t.unsupported_reason
                       for t in host.vm_types)  # fmt: skip
            refused = fails(create_vm, stub)
            assert refused.code == grpc.StatusCode.FAILED_PRECONDITION
            assert refused.info.metadata["field"] == "vm.vm_type"
            assert "shadow MMU" in refused.message
            assert list(stub.ListVms(vm_pb2.ListVmsRequest()).vms) == []
    finally:
        assert srv.stop() == 0


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("localhost:notaport", "not a number from 0 to 65535"),
        ("127.0.0.1:70000", "not a number from 0 to 65535"),
        ("::1:80", "in brackets: [::1]:80"),
        ("9090", "not HOST:PORT"),
    ],
)
def test_bad_metrics_address_is_a_usage_error(address, reason):
    result = server_cli("--state-dir", "none", "--metrics-listen", address)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--metrics-listen: " in result.stderr and reason in result.stderr


def test_metrics_address_forms():
    assert parse_metrics_address("[::1]:9090") == ("::1", 9090)
    assert parse_metrics_address(":9090") == ("127.0.0.1", 9090)
    assert parse_metrics_address("0.0.0.0:0") == ("0.0.0.0", 0)


@pytest.mark.parametrize("flag", ["--grace", "--shutdown-drain"])
def test_negative_shutdown_times_are_usage_errors(flag):
    result = server_cli("--state-dir", "none", flag, "-5")
    assert result.returncode == 2 and f"{flag} must be a number of seconds" in result.stderr
