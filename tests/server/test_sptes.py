"""StreamSptes, DecodeSpte, ZapSptes, GetDirtyLog and AgeSptes over real channels."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2

from kvmmu.v1 import common_pb2, fault_pb2, spte_pb2, vm_pb2
from tests.server.conftest import add_slot, create_vm, fails

pytestmark = pytest.mark.timeout(60)
Code = grpc.StatusCode
SP = spte_pb2


def mapped_vm(stub, pages: int = 3000) -> str:
    vm = create_vm(stub)
    add_slot(stub, vm, size=1 << 30)
    gpas = (np.arange(pages, dtype=np.uint64) << np.uint64(12)).tolist()
    stub.BatchFault(fault_pb2.BatchFaultRequest(name=vm, gpas=gpas, shared_error_code=0x2))
    return vm


def collect(stub, **request) -> dict[str, np.ndarray]:
    parts = list(stub.StreamSptes(SP.StreamSptesRequest(**request)))
    out = {}
    for key in ("gfns", "levels", "values", "roots"):
        arrays = [np.array(getattr(p, key), dtype=np.uint64) for p in parts]
        out[key] = np.concatenate([np.zeros(0, np.uint64), *arrays])
    out["chunks"] = np.array([len(p.values) for p in parts])
    return out


def test_stream_sptes_whole_vm_in_chunks(stub):
    vm = mapped_vm(stub)
    dump = collect(stub, name=vm, chunk_size=1000)
    assert len(dump["values"]) == 3000 and list(dump["chunks"]) == [1000, 1000, 1000]
    assert (dump["gfns"] == np.arange(3000)).all()
    assert set(dump["levels"].tolist()) == {1}
    assert set(dump["roots"].tolist()) == {common_pb2.TDP_ROOT_DIRECT}
    stats = stub.GetVmStats(vm_pb2.GetVmStatsRequest(name=f"{vm}/stats"))
    assert stats.pages_4k == len(dump["values"])
    with_tables = collect(stub, name=vm, include_non_leaf=True)
    assert len(with_tables["values"]) == 3000 + 6 + 1 + 1
    level2 = collect(stub, name=vm, level=2, include_non_leaf=True)
    assert set(level2["levels"].tolist()) == {2} and len(level2["values"]) == 6
    ranged = collect(stub, name=vm, gfn_range=common_pb2.GfnRange(start_gfn=100, end_gfn=110))
    assert ranged["gfns"].tolist() == list(range(100, 110))
    assert len(collect(stub, name=vm, root=common_pb2.TDP_ROOT_MIRROR)["values"]) == 0


def test_stream_sptes_only_present_drops_mmio(stub):
    vm = mapped_vm(stub, pages=10)
    stub.Fault(fault_pb2.FaultRequest(name=vm, gpa=0xFEE00000))
    assert len(collect(stub, name=vm)["values"]) == 11
    assert len(collect(stub, name=vm, only_present=True)["values"]) == 10


def test_stream_sptes_bad_requests(stub):
    vm = create_vm(stub)
    for request, field in (
        (SP.StreamSptesRequest(name=vm, level=6), "level"),
        (SP.StreamSptesRequest(name=vm, root=5), "root"),
        (SP.StreamSptesRequest(name=vm, gfn_range=common_pb2.GfnRange()), "gfn_range.end_gfn"),
        (SP.StreamSptesRequest(name="bad"), "name"),
    ):
        failure = fails(lambda r: list(stub.StreamSptes(r)), request)
        assert (failure.code, failure.field) == (Code.INVALID_ARGUMENT, field)
    missing = fails(lambda r: list(stub.StreamSptes(r)), SP.StreamSptesRequest(name="vms/gone"))
    assert missing.code == Code.NOT_FOUND


def test_cancelled_dump_stops_and_frees_its_stream(stub):
    vm = mapped_vm(stub, pages=20000)
    for _ in range(20):  # more cancelled streams than the server's stream limit
        stream = stub.StreamSptes(SP.StreamSptesRequest(name=vm, chunk_size=100))
        first = next(stream)
        assert len(first.values) == 100
        stream.cancel()
        with pytest.raises(grpc.RpcError) as err:
            for _chunk in stream:
                pass
        assert err.value.code() == Code.CANCELLED
    assert len(collect(stub, name=vm, chunk_size=1 << 20)["values"]) == 20000


def test_decode_spte_for_vm_and_for_profile(stub):
    vm = create_vm(stub)
    add_slot(stub, vm)
    mmio = stub.Fault(fault_pb2.FaultRequest(name=vm, gpa=0x80000000))
    decoded = stub.DecodeSpte(SP.DecodeSpteRequest(value=mmio.spte, vm=vm, level=1))
    assert decoded.kind == SP.SPTE_KIND_MMIO and decoded.is_mmio_for_vm
    assert decoded.mmio.gfn == 0x80000 and decoded.mmio.generation_valid
    assert "stale" not in decoded.verdict
    assert sum(f.msb - f.lsb + 1 for f in decoded.fields) == 64
    add_slot(stub, vm, slot=1, gpa=0x40000000, size=0x1000)  # a memslot change: generation +2
    stale = stub.DecodeSpte(SP.DecodeSpteRequest(value=mmio.spte, vm=vm, level=1))
    assert stale.is_mmio_for_vm and not stale.mmio.generation_valid
    assert stale.verdict.endswith(
        "; stale: MMIO generation 0x2, the VM's is 0x4 (the next fault on it replaces it)"
    )
    leaf = stub.Fault(fault_pb2.FaultRequest(name=vm, gpa=0x1000, error_code=0x2))
    decoded = stub.DecodeSpte(SP.DecodeSpteRequest(value=leaf.spte, vm=vm, level=1))
    assert decoded.kind == SP.SPTE_KIND_LEAF and decoded.pfn == 1
    assert decoded.predicates.is_shadow_present_pte and decoded.predicates.is_dirty_spte
    tdx = stub.DecodeSpte(
        SP.DecodeSpteRequest(
            value=mmio.spte & ~0x7,
            host=SP.DecodeHostContext(host_profile="hostProfiles/intel-tdx", mmio_value=0),
        )
    )
    assert tdx.kind == SP.SPTE_KIND_MMIO and not tdx.is_mmio_for_host_value
    assert not tdx.mmio.HasField("generation_valid")
    server_host = stub.DecodeSpte(SP.DecodeSpteRequest(value=1 << 63, host=SP.DecodeHostContext()))
    assert server_host.kind == SP.SPTE_KIND_NON_PRESENT


def test_decode_spte_errors(stub):
    assert fails(stub.DecodeSpte, SP.DecodeSpteRequest(value=1)).field == "vm"
    assert fails(stub.DecodeSpte, SP.DecodeSpteRequest(vm="vms/x", level=0)).field == "level"
    unknown = fails(
        stub.DecodeSpte,
        SP.DecodeSpteRequest(host=SP.DecodeHostContext(host_profile="hostProfiles/nope")),
    )
    assert unknown.code == Code.NOT_FOUND
    assert unknown.detail(error_details_pb2.ResourceInfo).resource_name == "hostProfiles/nope"
    bad = fails(
        stub.DecodeSpte, SP.DecodeSpteRequest(host=SP.DecodeHostContext(host_profile="nope"))
    )
    assert bad.field == "host.host_profile"
    assert fails(stub.DecodeSpte, SP.DecodeSpteRequest(vm="vms/gone")).code == Code.NOT_FOUND


def test_zap_range_slot_and_all(stub):
    vm = mapped_vm(stub, pages=100)
    ranged = stub.ZapSptes(
        SP.ZapSptesRequest(name=vm, gfn_range=common_pb2.GfnRange(start_gfn=0, end_gfn=10))
    )
    assert ranged.spte_changes == 10
    assert len(collect(stub, name=vm)["values"]) == 90
    assert stub.ZapSptes(SP.ZapSptesRequest(name=vm, slot=0)).spte_changes == 90
    mapped = stub.BatchFault(
        fault_pb2.BatchFaultRequest(name=vm, gpas=[0x1000], shared_error_code=2)
    )
    assert mapped.outcomes[0] == common_pb2.FAULT_OUTCOME_FIXED
    assert stub.ZapSptes(SP.ZapSptesRequest(name=vm, all=True)).spte_changes > 0
    stats = stub.GetVmStats(vm_pb2.GetVmStatsRequest(name=f"{vm}/stats"))
    assert stats.pages_4k == 0
    assert fails(stub.ZapSptes, SP.ZapSptesRequest(name=vm)).field == "gfn_range"
    assert fails(stub.ZapSptes, SP.ZapSptesRequest(name=vm, all=False)).field == "all"
    missing = fails(stub.ZapSptes, SP.ZapSptesRequest(name=vm, slot=9))
    assert missing.code == Code.NOT_FOUND


def test_dirty_log_get_and_clear(stub):
    vm = create_vm(stub)
    add_slot(stub, vm, slot=1, gpa=0x100000, size=0x100000, log_dirty_pages=True)
    for page in (0, 3, 64, 3):
        stub.Fault(fault_pb2.FaultRequest(name=vm, gpa=0x100000 + page * 0x1000, error_code=0x3))
    log = stub.GetDirtyLog(SP.GetDirtyLogRequest(name=f"{vm}/memslots/1"))
    assert (log.base_gfn, log.npages) == (0x100, 256)
    assert list(log.dirty_page_offsets) == [0, 3, 64] and log.dirty_count == 3
    assert log.bitmap[0] == 0b1001 and log.bitmap[1] == 1 and len(log.bitmap) == 4
    again = stub.GetDirtyLog(SP.GetDirtyLogRequest(name=f"{vm}/memslots/1"))
    assert again.dirty_count == 0
    add_slot(stub, vm, slot=2, gpa=0x400000, size=0x1000)
    not_logging = fails(stub.GetDirtyLog, SP.GetDirtyLogRequest(name=f"{vm}/memslots/2"))
    assert not_logging.code == Code.FAILED_PRECONDITION
    missing = fails(stub.GetDirtyLog, SP.GetDirtyLogRequest(name=f"{vm}/memslots/3"))
    assert missing.code == Code.NOT_FOUND


def test_age_sptes(stub):
    vm = mapped_vm(stub, pages=4)
    rng = common_pb2.GfnRange(start_gfn=0, end_gfn=4)
    assert stub.AgeSptes(SP.AgeSptesRequest(name=vm, gfn_range=rng, test_only=True)).young
    aged = stub.AgeSptes(SP.AgeSptesRequest(name=vm, gfn_range=rng))
    assert aged.young and aged.spte_changes == 4
    assert not stub.AgeSptes(SP.AgeSptesRequest(name=vm, gfn_range=rng)).young
    assert fails(stub.AgeSptes, SP.AgeSptesRequest(name=vm)).field == "gfn_range"
