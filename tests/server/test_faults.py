"""Fault and BatchFault over real loopback channels."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from kvmmu.v1 import common_pb2, fault_pb2, vm_pb2
from tests.server.conftest import add_slot, create_vm, fails

pytestmark = pytest.mark.timeout(60)
Code = grpc.StatusCode
FP = fault_pb2


def test_fault_maps_a_page_with_events_and_explanation(stub):
    vm = create_vm(stub)
    add_slot(stub, vm)
    res = stub.Fault(
        FP.FaultRequest(name=vm, gpa=0x5000, flags=FP.ErrorCodeFlags(write=True), explain=True)
    )
    assert res.outcome == common_pb2.FAULT_OUTCOME_FIXED
    assert (res.gfn, res.level) == (5, 1)
    assert res.root == common_pb2.TDP_ROOT_DIRECT and res.goal_level == 1
    names = [e.name for e in res.events]
    assert names[-1] == "kvm_mmu_set_spte" and "kvm_mmu_get_page" in names
    set_spte = res.events[-1]
    assert set_spte.kvm_mmu_set_spte.spte == res.spte and set_spte.kvm_mmu_set_spte.gfn == 5
    assert set_spte.text.startswith("gfn 5 spte ")
    assert all(e.sequence == 0 for e in res.events)  # tracing is off: not logged
    assert res.explanation[0].function == "kvm_mmu_page_fault"
    again = stub.Fault(FP.FaultRequest(name=vm, gpa=0x5000, error_code=0x2))
    assert again.outcome == common_pb2.FAULT_OUTCOME_SPURIOUS
    assert not again.explanation


def test_mmio_fault_and_cached_mmio_spte(stub):
    vm = create_vm(stub)
    first = stub.Fault(FP.FaultRequest(name=vm, gpa=0xFEE00000))
    assert first.outcome == common_pb2.FAULT_OUTCOME_EMULATE
    assert first.events[-1].name == "mark_mmio_spte"
    assert first.events[-1].mark_mmio_spte.gfn == 0xFEE00
    second = stub.Fault(
        FP.FaultRequest(name=vm, gpa=0xFEE00000, flags=FP.ErrorCodeFlags(rsvd=True))
    )
    assert second.mmio_check == common_pb2.FAULT_OUTCOME_EMULATE
    stats = stub.GetVmStats(vm_pb2.GetVmStatsRequest(name=f"{vm}/stats"))
    assert stats.pf_mmio_spte_created == 1


def test_fault_sequences_when_tracing(stub):
    vm = create_vm(stub, tracing_enabled=True)
    add_slot(stub, vm)
    a = stub.Fault(FP.FaultRequest(name=vm, gpa=0x1000, error_code=0x2))
    b = stub.Fault(FP.FaultRequest(name=vm, gpa=0x2000, error_code=0x2))
    seqs = [e.sequence for e in a.events] + [e.sequence for e in b.events]
    assert seqs == list(range(1, len(seqs) + 1))


def test_fault_bad_gpa(stub):
    vm = create_vm(stub)
    failure = fails(stub.Fault, FP.FaultRequest(name=vm, gpa=1 << 52))
    assert (failure.code, failure.field) == (Code.INVALID_ARGUMENT, "gpa")
    assert fails(stub.Fault, FP.FaultRequest(name="x")).field == "name"


def test_batch_fault_equals_unary_faults_in_order(stub):
    gpas = [0x1000, 0x2000, 0x1000, 0xFEE00000, 0x40000000, 0x3000, 0x200000]
    codes = [0x2, 0x0, 0x2, 0x0, 0x4, 0x10, 0x2]
    batch_vm, unary_vm = create_vm(stub), create_vm(stub)
    for vm in (batch_vm, unary_vm):
        add_slot(stub, vm, size=0x40000000)
    batch = stub.BatchFault(FP.BatchFaultRequest(name=batch_vm, gpas=gpas, error_codes=codes))
    singles = [
        stub.Fault(FP.FaultRequest(name=unary_vm, gpa=g, error_code=c))
        for g, c in zip(gpas, codes, strict=True)
    ]
    assert list(batch.outcomes) == [s.outcome for s in singles]
    assert list(batch.sptes) == [s.spte for s in singles]
    assert list(batch.levels) == [s.level for s in singles]
    assert list(batch.gfns) == [s.gfn for s in singles]


def test_batch_fault_shared_error_code_and_large_batch(stub):
    vm = create_vm(stub)
    add_slot(stub, vm, gpa=0x100000000, size=0x10000000)
    gpas = ((np.arange(8192, dtype=np.uint64) + np.uint64(0x100000)) << np.uint64(12)).tolist()
    res = stub.BatchFault(FP.BatchFaultRequest(name=vm, gpas=gpas, shared_error_code=0x2))
    assert len(res.outcomes) == 8192
    assert set(res.outcomes) == {common_pb2.FAULT_OUTCOME_FIXED}
    assert res.gfns[0] == 0x100000 and res.gfns[-1] == 0x100000 + 8191
    stats = stub.GetVmStats(vm_pb2.GetVmStatsRequest(name=f"{vm}/stats"))
    assert stats.pages_4k == 8192 and stats.pf_fixed == 8192
    empty = stub.BatchFault(FP.BatchFaultRequest(name=vm))
    assert len(empty.outcomes) == 0


def test_batch_fault_validates_before_faulting(stub):
    vm = create_vm(stub)
    add_slot(stub, vm)
    mismatch = fails(
        stub.BatchFault, FP.BatchFaultRequest(name=vm, gpas=[0x1000, 0x2000], error_codes=[2])
    )
    assert (mismatch.code, mismatch.field) == (Code.INVALID_ARGUMENT, "error_codes")
    beyond = fails(stub.BatchFault, FP.BatchFaultRequest(name=vm, gpas=[0x1000, 1 << 60]))
    assert (beyond.code, beyond.field) == (Code.INVALID_ARGUMENT, "gpas[1]")
    stats = stub.GetVmStats(vm_pb2.GetVmStatsRequest(name=f"{vm}/stats"))
    assert stats.pf_taken == 0
