"""Constants that are the same in every SPTE layout (spec section 1).

Layout-dependent values (ACC_* numbering, software-bit positions, MMIO
generation bits, FROZEN_SPTE) live in `layout`.
"""

from __future__ import annotations

from typing import Final

from mmu.bits import BIT

# Generic x86 page-table bits (used by NPT and shadow paging).
PT_PRESENT_MASK: Final = 0x1
PT_WRITABLE_MASK: Final = 0x2
PT_USER_MASK: Final = 0x4
PT_PWT_MASK: Final = 0x8
PT_PCD_MASK: Final = 0x10
PT_ACCESSED_MASK: Final = 0x20
PT_DIRTY_MASK: Final = 0x40
PT_PAGE_SIZE_MASK: Final = 0x80
PT_GLOBAL_MASK: Final = 0x100
PT64_NX_MASK: Final = BIT(63)

# EPT bits (asm/vmx.h).
VMX_EPT_READABLE_MASK: Final = 0x1
VMX_EPT_WRITABLE_MASK: Final = 0x2
VMX_EPT_EXECUTABLE_MASK: Final = 0x4
VMX_EPT_RWX_MASK: Final = 0x7
VMX_EPT_MT_EPTE_SHIFT: Final = 3
VMX_EPT_IPAT_BIT: Final = 0x40
VMX_EPT_ACCESS_BIT: Final = 0x100
VMX_EPT_DIRTY_BIT: Final = 0x200
VMX_EPT_USER_EXECUTABLE_MASK: Final = 0x400
VMX_EPT_SUPPRESS_VE_BIT: Final = BIT(63)
VMX_EPT_MISCONFIG_WX_VALUE: Final = 0x6
EPT_MT_MASK: Final = 0x78  # memory type (bits 3..5) and IPAT (bit 6)

# Memory types (MTRR encoding, before the shift into bits 3..5).
MTRR_TYPE_NAMES: Final = {0: "UC", 1: "WC", 4: "WT", 5: "WP", 6: "WB"}

# KVM software bits shared by both layouts (spte.h).
SPTE_MMU_PRESENT_MASK: Final = BIT(11)
SPTE_BASE_ADDR_MASK: Final = 0x000FFFFFFFFFF000
SPTE_LEVEL_BITS: Final = 9
SPTE_ENT_PER_PAGE: Final = 512
DEFAULT_SPTE_HOST_WRITABLE: Final = BIT(9)
DEFAULT_SPTE_MMU_WRITABLE: Final = BIT(10)
SHADOW_NONPRESENT_VALUE: Final = BIT(63)
SHADOW_NONPRESENT_OR_RSVD_MASK_LEN: Final = 5

# Paging levels.
PG_LEVEL_4K: Final = 1
PG_LEVEL_2M: Final = 2
PG_LEVEL_1G: Final = 3
PT64_ROOT_4LEVEL: Final = 4
PT64_ROOT_5LEVEL: Final = 5
PT64_ROOT_MAX_LEVEL: Final = 5
KVM_MAX_HUGEPAGE_LEVEL: Final = PG_LEVEL_1G
LEVEL_NAMES: Final = {1: "4K", 2: "2M", 3: "1G", 4: "512G", 5: "256T"}

KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS: Final = BIT(63)
KVM_PFN_NOSLOT: Final = BIT(63)


def KVM_PAGES_PER_HPAGE(level: int) -> int:  # noqa: N802 - kernel name
    """4 KiB pages covered by one entry at `level`."""
    return 1 << (SPTE_LEVEL_BITS * (level - 1))


# Page-fault error code bits (asm/kvm_host.h).
PFERR_PRESENT_MASK: Final = BIT(0)
PFERR_WRITE_MASK: Final = BIT(1)
PFERR_USER_MASK: Final = BIT(2)
PFERR_RSVD_MASK: Final = BIT(3)
PFERR_FETCH_MASK: Final = BIT(4)
PFERR_PK_MASK: Final = BIT(5)
PFERR_SS_MASK: Final = BIT(6)
PFERR_SGX_MASK: Final = BIT(15)
PFERR_GUEST_RMP_MASK: Final = BIT(31)
PFERR_GUEST_FINAL_MASK: Final = BIT(32)
PFERR_GUEST_PAGE_MASK: Final = BIT(33)
PFERR_GUEST_ENC_MASK: Final = BIT(34)
PFERR_GUEST_SIZEM_MASK: Final = BIT(35)
PFERR_GUEST_VMPL_MASK: Final = BIT(36)
PFERR_IMPLICIT_ACCESS: Final = BIT(48)
PFERR_PRIVATE_ACCESS: Final = BIT(49)

# A name for every PFERR_* bit: the kvmmmu tracepoints' letters (mmutrace.h) for the
# bits they print, KVM's constant names for the rest (the tracepoints omit them).
ERROR_CODE_LABELS: Final = (
    (PFERR_PRESENT_MASK, "P"),
    (PFERR_WRITE_MASK, "W"),
    (PFERR_USER_MASK, "U"),
    (PFERR_PK_MASK, "PK"),
    (PFERR_SS_MASK, "SS"),
    (PFERR_SGX_MASK, "SGX"),
    (PFERR_RSVD_MASK, "RSVD"),
    (PFERR_FETCH_MASK, "F"),
    (PFERR_GUEST_RMP_MASK, "GUEST_RMP"),
    (PFERR_GUEST_FINAL_MASK, "GUEST_FINAL"),
    (PFERR_GUEST_PAGE_MASK, "GUEST_PAGE"),
    (PFERR_GUEST_ENC_MASK, "GUEST_ENC"),
    (PFERR_GUEST_SIZEM_MASK, "GUEST_SIZEM"),
    (PFERR_GUEST_VMPL_MASK, "GUEST_VMPL"),
    (PFERR_IMPLICIT_ACCESS, "IMPLICIT"),
    (PFERR_PRIVATE_ACCESS, "PRIVATE"),
)


def error_code_label(code: int) -> str:
    """ "W|PRIVATE" for 0x2000000000002: every bit named, unknown ones as hex, "-" if none."""
    names = [name for bit, name in ERROR_CODE_LABELS if code & bit]
    rest = code & ~sum(bit for bit, _ in ERROR_CODE_LABELS)
    return "|".join(names + ([f"{rest:#x}"] if rest else [])) or "-"


# Page-fault return codes (mmu_internal.h).
RET_PF_CONTINUE: Final = 0
RET_PF_RETRY: Final = 1
RET_PF_EMULATE: Final = 2
RET_PF_WRITE_PROTECTED: Final = 3
RET_PF_INVALID: Final = 4
RET_PF_FIXED: Final = 5
RET_PF_SPURIOUS: Final = 6
RET_PF_NAMES: Final = {
    RET_PF_CONTINUE: "RET_PF_CONTINUE",
    RET_PF_RETRY: "RET_PF_RETRY",
    RET_PF_EMULATE: "RET_PF_EMULATE",
    RET_PF_WRITE_PROTECTED: "RET_PF_WRITE_PROTECTED",
    RET_PF_INVALID: "RET_PF_INVALID",
    RET_PF_FIXED: "RET_PF_FIXED",
    RET_PF_SPURIOUS: "RET_PF_SPURIOUS",
}

# Memslot flags (uapi/linux/kvm.h).
KVM_MEM_LOG_DIRTY_PAGES: Final = BIT(0)
KVM_MEM_READONLY: Final = BIT(1)
KVM_MEM_GUEST_MEMFD: Final = BIT(2)
KVM_MEMORY_EXIT_FLAG_PRIVATE: Final = BIT(3)
