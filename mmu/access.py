"""Error codes the way the vendor exit handlers build them (spec 8.3).

For tools that describe an access ("a user write to this GPA") rather than
a raw error code: EPT violations (__vmx_handle_ept_violation), EPT
misconfigurations, and SVM #NPF codes, including the TDX shared bit and the
private-access flag of TDX and SNP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mmu.constants import (
    PFERR_FETCH_MASK,
    PFERR_GUEST_FINAL_MASK,
    PFERR_PRESENT_MASK,
    PFERR_PRIVATE_ACCESS,
    PFERR_RSVD_MASK,
    PFERR_USER_MASK,
    PFERR_WRITE_MASK,
)
from mmu.host import Host
from mmu.state import tdx_shared_gfn_bit
from mmu.vmtypes import VmType

Access = Literal["read", "write", "exec"]


@dataclass(frozen=True, slots=True)
class VendorFault:
    """What kvm_mmu_page_fault receives for a described access."""

    gpa: int
    error_code: int


def vendor_fault(
    host: Host,
    vm_type: VmType,
    guest_maxphyaddr: int,
    gpa: int,
    *,
    access: Access = "read",
    present: bool = False,
    private: bool = False,
    rsvd: bool = False,
) -> VendorFault:
    """The GPA and error code of an access as the exit handler would pass them.

    `rsvd` is an access to an MMIO SPTE: an EPT misconfiguration on Intel, a
    #NPF with RSVD on AMD. For a TD, a shared access carries the shared bit in
    the GPA and a private one gets PFERR_PRIVATE_ACCESS; for SNP a private
    (encrypted) access gets PFERR_PRIVATE_ACCESS.
    """
    if vm_type == VmType.TDX:
        shared_bit = tdx_shared_gfn_bit(guest_maxphyaddr) << 12
        gpa = gpa & ~shared_bit if private else gpa | shared_bit
    if host.config.mmu == "ept":
        if rsvd:
            return VendorFault(gpa, PFERR_RSVD_MASK)
        code = {"read": PFERR_USER_MASK, "write": PFERR_WRITE_MASK, "exec": PFERR_FETCH_MASK}[
            access
        ]
    else:
        code = PFERR_USER_MASK | PFERR_GUEST_FINAL_MASK
        code |= {"read": 0, "write": PFERR_WRITE_MASK, "exec": PFERR_FETCH_MASK}[access]
        if rsvd:
            code |= PFERR_RSVD_MASK | PFERR_PRESENT_MASK
    if present:
        code |= PFERR_PRESENT_MASK
    if private and vm_type in (VmType.TDX, VmType.SNP):
        code |= PFERR_PRIVATE_ACCESS
    return VendorFault(gpa, code)
