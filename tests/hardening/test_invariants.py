"""The invariant checks find what they look for (so a clean report means something)."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest

from kvmmu.v1 import common_pb2, fault_pb2, memslot_pb2, service_pb2_grpc, vm_pb2
from mmu.pool import TREE_DIRECT
from mmu.state import VmState
from server.app import create_server
from server.config import ServerConfig
from tests.hardening.invariants import check_over_api, check_registry
from tests.hardening.test_fuzz import set_up

pytestmark = pytest.mark.timeout(60)


def _count(state: VmState) -> None:
    state.stats.pages_4k += 1


def _leak(state: VmState) -> None:
    state.pool.alloc(1, 0x12345000 >> 12, TREE_DIRECT)


def _freeze(state: VmState) -> None:
    root = state.direct_root
    assert root is not None
    state.pool.entries[root][511] = state.host.layout.frozen_spte


def _nx(state: VmState) -> None:
    state.stats.nx_lpage_splits += 1


@pytest.mark.parametrize(
    ("corrupt", "found", "over_api"),
    [
        (_count, "pages_4k", True),
        (_leak, "unreachable", True),
        (_freeze, "frozen", True),
        (_nx, "nx_lpage_splits", False),  # the API shows no NX list: checked inside only
    ],
)
def test_a_corrupted_vm_is_reported(
    corrupt: Callable[[VmState], None], found: str, over_api: bool
) -> None:
    server, port = create_server("127.0.0.1:0", config=ServerConfig())
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = service_pb2_grpc.MmuServiceStub(channel)
            name = set_up(stub, "inv", vm_pb2.VM_TYPE_DEFAULT)
            gpas = [page << 12 for page in range(0, 4096, 7)] + [(4 << 30) + 0x3000]
            stub.BatchFault(fault_pb2.BatchFaultRequest(name=name, gpas=gpas, shared_error_code=2))
            clean = check_registry(server.registry)
            clean.assert_ok()
            assert clean.leaves == len(gpas) and clean.tables > 3
            check_over_api(channel, "intel-ept").assert_ok()
            corrupt(server.registry.entry("inv").vm.state)
            assert any(found in p for p in check_registry(server.registry).problems)
            if over_api:
                problems = check_over_api(channel, "intel-ept").problems
                assert problems and any(found in p or "tables" in p for p in problems), problems
    finally:
        server.stop(grace=1)


def test_td_shared_and_private_mappings_are_consistent_and_a_wrong_gfn_is_found() -> None:
    server, port = create_server("127.0.0.1:0", config=ServerConfig(profile="intel-tdx"))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = service_pb2_grpc.MmuServiceStub(channel)
            name = set_up(stub, "td", vm_pb2.VM_TYPE_TDX)
            state = server.registry.entry("td").vm.state
            shared_bit = state.gfn_direct_bits << 12
            # Slot 1 (4 GiB, 2M backing): four 2M leaves in the direct root's shared half.
            shared = [(4 << 30) + page * 0x1000 | shared_bit for page in range(0, 2048, 9)]
            private = [page << 12 for page in range(0, 0x100, 5)]  # slot 0, guest_memfd
            stub.SetMemoryAttributes(
                memslot_pb2.SetMemoryAttributesRequest(
                    name=name,
                    gfn_range=common_pb2.GfnRange(start_gfn=0, end_gfn=0x100),
                    private=True,
                )
            )
            for gpas in (shared, private):
                stub.BatchFault(
                    fault_pb2.BatchFaultRequest(name=name, gpas=gpas, shared_error_code=2)
                )
            clean = check_registry(server.registry)
            clean.assert_ok()
            assert clean.leaves == 4 + len(private)
            check_over_api(channel, "intel-tdx").assert_ok()
            direct_root = state.direct_root
            assert direct_root is not None
            below_root = state.child_slot(int(state.pool.entries[direct_root].max()))
            state.pool.gfn[below_root] |= state.gfn_direct_bits  # as if it kept the shared bit
            assert any("has gfn" in p for p in check_registry(server.registry).problems)
    finally:
        server.stop(grace=1)
