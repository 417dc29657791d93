"""The TDP root's SPTE permission table (update_permission_bitmask; spec 12.9).

Entry i is for page-fault error code pfec = i << 1; bit n of an entry set
means "an SPTE whose ACC_* bits equal n faults for that access".
"""

from __future__ import annotations

from mmu.constants import PFERR_FETCH_MASK, PFERR_USER_MASK, PFERR_WRITE_MASK
from mmu.host import Host

ENTRY_MASK = 0xFFFF


def _acc_set(acc_bit: int) -> int:
    """B(a): the 16-bit set of ACC values n (1..15) that contain `acc_bit`."""
    return sum(1 << n for n in range(1, 16) if n & acc_bit)


def tdp_root_permissions(host: Host, *, cr4_smep: bool) -> list[int]:
    layout = host.layout
    ept = host.shadow_x_mask != 0
    entries = []
    for index in range(16):
        pfec = index << 1
        write = bool(pfec & PFERR_WRITE_MASK)
        user = bool(pfec & PFERR_USER_MASK)
        fetch = bool(pfec & PFERR_FETCH_MASK)
        rf = (
            ~_acc_set(layout.acc_read) & ENTRY_MASK
            if layout.acc_read and not (write or fetch)
            else 0
        )
        wf = ~_acc_set(layout.acc_write) & ENTRY_MASK if write else 0
        ff = uf = 0
        if ept:
            if fetch:
                exec_bit = layout.acc_user if cr4_smep and user else layout.acc_exec
                ff = ~_acc_set(exec_bit) & ENTRY_MASK
        else:
            kf = 0 if user else _acc_set(layout.acc_user)
            if user and not cr4_smep:
                uf = ~_acc_set(layout.acc_user) & ENTRY_MASK
            if fetch:
                ff = ~_acc_set(layout.acc_exec) & ENTRY_MASK
                if cr4_smep:
                    ff |= kf
        entries.append(ff | uf | wf | rf)
    return entries
