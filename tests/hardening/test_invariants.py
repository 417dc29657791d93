"""The invariant checks find what they look for (so a clean report means something)."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest

from kvmmu.v1 import fault_pb2, service_pb2_grpc, vm_pb2
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
