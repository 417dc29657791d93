"""Request checks against limits that no single model operation enforces itself.

The other limits live where the resource is counted: max_vms in the registry,
memslots per VM in the apply layer, page tables (SPTEs) per VM in the model's
table pool, batch size in the fault converter, concurrent streams in the
servicer and the message size in the interceptor. No gRPC here.
"""

from __future__ import annotations

from mmu.errors import LimitExceeded
from mmu.memslots import Memslot
from server.config import Limits


def check_dirty_log_size(slot: Memslot, limits: Limits) -> None:
    """A dirty-logging memslot may span at most `max_dirty_log_pages` pages.

    GetDirtyLog builds the slot's whole bitmap (and KVM's would be as big), so an
    unbounded slot would let one request take seconds and gigabytes.
    """
    if slot.log_dirty and slot.npages > limits.max_dirty_log_pages:
        raise LimitExceeded(
            f"a dirty-logging memslot may span at most {limits.max_dirty_log_pages} pages "
            f"({limits.max_dirty_log_pages * 4096:#x} bytes); this one has {slot.npages}",
            limit="max_dirty_log_pages",
            field="memslot.log_dirty_pages",
        )
