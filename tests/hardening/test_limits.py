"""The limits this issue added: request message size and dirty-logging memslot size,
each RESOURCE_EXHAUSTED with a QuotaFailure naming it; and every limit documented."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import fields

import grpc
import pytest
from google.rpc import error_details_pb2

from kvmmu.v1 import fault_pb2, memslot_pb2, service_pb2_grpc, vm_pb2
from server.config import Limits
from tests.server.conftest import REPO, add_slot, create_vm, fails, start_server

pytestmark = pytest.mark.timeout(60)
Code = grpc.StatusCode


@pytest.fixture(scope="module")
def small() -> Iterator[service_pb2_grpc.MmuServiceStub]:
    srv = start_server(
        "--max-message-bytes", "4096",
        "--max-dirty-log-pages", "512",
        "--log-level", "error",
    )  # fmt: skip
    with srv.channel() as channel:
        yield service_pb2_grpc.MmuServiceStub(channel)
    assert srv.stop() == 0


def quota(failure) -> str:  # type: ignore[no-untyped-def]
    assert failure.code == Code.RESOURCE_EXHAUSTED, failure
    [violation] = failure.detail(error_details_pb2.QuotaFailure).violations
    assert failure.info.metadata["limit"] == violation.subject
    return str(violation.subject)


def test_request_over_the_message_size_is_refused_unparsed(small) -> None:  # type: ignore[no-untyped-def]
    vm = create_vm(small)
    add_slot(small, vm)
    ok = fault_pb2.BatchFaultRequest(name=vm, gpas=[0x1000] * 500)  # ~4 KB
    assert ok.ByteSize() <= 4096
    small.BatchFault(ok)
    big = fault_pb2.BatchFaultRequest(name=vm, gpas=[0x1000] * 600)
    failure = fails(small.BatchFault, big)
    assert quota(failure) == "max_message_bytes"
    assert "at most 4096" in failure.message
    # Beyond twice the limit gRPC itself refuses, with the same code.
    huge = fault_pb2.BatchFaultRequest(name=vm, gpas=[0x1000] * 1100)
    with pytest.raises(grpc.RpcError) as info:
        small.BatchFault(huge)
    assert info.value.code() == Code.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    stats = small.GetVmStats(vm_pb2.GetVmStatsRequest(name=f"{vm}/stats"))
    assert stats.pf_taken == 500  # the refused batches changed nothing


def test_dirty_logging_memslot_size(small) -> None:  # type: ignore[no-untyped-def]
    vm = create_vm(small)
    add_slot(small, vm, slot=0, size=512 << 12, log_dirty_pages=True)
    failure = fails(add_slot, small, vm, slot=1, gpa=1 << 30, size=513 << 12, log_dirty_pages=True)
    assert quota(failure) == "max_dirty_log_pages"
    assert failure.info.metadata["field"] == "memslot.log_dirty_pages"
    # Turning dirty logging on for a big slot (FLAGS_ONLY) is the same limit.
    add_slot(small, vm, slot=1, gpa=1 << 30, size=1 << 30)
    failure = fails(add_slot, small, vm, slot=1, gpa=1 << 30, size=1 << 30, log_dirty_pages=True)
    assert quota(failure) == "max_dirty_log_pages"
    slot = small.GetMemslot(memslot_pb2.GetMemslotRequest(name=f"{vm}/memslots/1"))
    assert not slot.log_dirty_pages


def test_every_limit_is_a_flag_and_documented_with_its_default() -> None:
    readme = (REPO / "README.md").read_text()
    table = {
        m.group(1): m.group(2)
        for m in re.finditer(r"^\| `--([a-z-]+)` \| ([^|]+?) \|", readme, flags=re.MULTILINE)
    }
    for f in fields(Limits):
        flag = f.name.replace("_", "-")
        assert flag in table, f"README has no row for --{flag}"
        documented = int(table[flag].split()[0].replace(",", ""))
        assert documented == getattr(Limits(), f.name), flag
