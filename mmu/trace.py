"""Text of the kvmmmu tracepoints, in each tracepoint's own field order and format
(arch/x86/kvm/mmu/mmutrace.h; spec sections 9 and 12.10)."""

from __future__ import annotations

from typing import Any, Final

from mmu.constants import (
    ERROR_CODE_LABELS,
    KVM_PAGES_PER_HPAGE,
    PT_PRESENT_MASK,
    PT_WRITABLE_MASK,
    RET_PF_FIXED,
    RET_PF_SPURIOUS,
)
from mmu.host import Host
from mmu.mmio import get_mmio_spte_generation
from mmu.spte import is_executable_pte

# The letters the tracepoints print: the first eight of the labels, in their order.
PFERR_FLAG_NAMES: Final = ERROR_CODE_LABELS[:8]


def spte_access_letters(host: Host, spte: int) -> str:
    """The (rwxu) group of kvm_mmu_set_spte."""
    r = "r" if host.shadow_present_mask or spte & PT_PRESENT_MASK else "-"
    w = "w" if spte & PT_WRITABLE_MASK else "-"
    if host.layout.trace_always_user_letter:
        x_bits = host.shadow_x_mask | host.shadow_nx_mask
        x = "x" if (spte & x_bits) == host.shadow_x_mask else "-"
    else:
        x = "x" if is_executable_pte(host, spte) else "-"
    if host.layout.trace_always_user_letter or host.shadow_user_mask:
        u = "u" if spte & (host.shadow_user_mask | host.shadow_xu_mask) else "-"
    else:
        u = ""
    return r + w + x + u


def kvm_mmu_set_spte(host: Host, gfn: int, spte: int, level: int, sptep_pa: int) -> str:
    letters = spte_access_letters(host, spte)
    return f"gfn {gfn:x} spte {spte:x} ({letters}) level {level} at {sptep_pa:x}"


def mark_mmio_spte_fields(host: Host, spte: int) -> tuple[int, int]:
    """(access, gen) as the tracepoint records them."""
    return spte & host.layout.acc_all, get_mmio_spte_generation(host.layout, spte)


def mark_mmio_spte(host: Host, gfn: int, spte: int, sptep: str = "") -> str:
    access, gen = mark_mmio_spte_fields(host, spte)
    tail = f"gfn {gfn:x} access {access:x} gen {gen:x}"
    return f"sptep:{sptep} {tail}" if sptep else tail


def handle_mmio_page_fault(addr: int, gfn: int, access: int) -> str:
    return f"addr:{addr:x} gfn {gfn:x} access {access:x}"


def check_mmio_spte(spte: int, kvm_gen: int, spte_gen: int) -> str:
    valid = int(kvm_gen == spte_gen)
    return f"spte {spte:x} kvm_gen {kvm_gen:x} spte-gen {spte_gen:x} valid {valid}"


def spte_requested_pfn(gfn: int, fault_pfn: int, goal_level: int) -> int:
    return fault_pfn | (gfn & (KVM_PAGES_PER_HPAGE(goal_level) - 1))


def kvm_mmu_spte_requested(
    host: Host, gfn: int, fault_pfn: int, goal_level: int, access: int | None = None
) -> str:
    pfn = spte_requested_pfn(gfn, fault_pfn, goal_level)
    text = f"gfn {gfn:x} pfn {pfn:x} level {goal_level}"
    if host.layout.trace_spte_requested_has_access:
        text += f" access {(host.layout.acc_all if access is None else access):x}"
    return text


def kvm_tdp_mmu_spte_changed(as_id: int, gfn: int, level: int, old: int, new: int) -> str:
    return f"as id {as_id} gfn {gfn:x} level {level} old_spte {old:x} new_spte {new:x}"


def c_alt_hex(value: int) -> str:
    """printf's %#llx: no 0x prefix for zero."""
    return f"{value:#x}" if value else "0"


def error_code_flags(error_code: int) -> str:
    return "|".join(name for bit, name in PFERR_FLAG_NAMES if error_code & bit)


def fast_page_fault(
    vcpu_id: int, gpa: int, error_code: int, sptep: str, old: int, new: int, ret: int
) -> str:
    return (
        f"vcpu {vcpu_id} gva {gpa:x} error_code {error_code_flags(error_code)} sptep {sptep} "
        f"old {c_alt_hex(old)} new {new:x} spurious {int(ret == RET_PF_SPURIOUS)} "
        f"fixed {int(ret == RET_PF_FIXED)}"
    )


def kvm_mmu_split_huge_page(gfn: int, spte: int, level: int, errno: int) -> str:
    return f"gfn {gfn:x} spte {spte:x} level {level} errno {errno}"


def page_role(host: Host, gfn: int, level: int, access: int) -> str:
    """The page dump of kvm_mmu_get_page / prepare_zap_page, in the kernel's layout.

    TDP tables have 8-byte entries, quadrant 0, the direct role and EFER.NX set;
    the fields the model does not track (sp->mmu_valid_gen, unused by the TDP
    MMU, and the root count) print as 0; the role has no mirror flag in the text.
    """
    strings = host.layout.role_access_strings
    acc = strings[access] if 0 <= access < len(strings) else f"{access:x}"
    ad = "" if host.kvm_ad_enabled else "!"
    return f"sp gen 0 gfn {gfn:x} l{level} 8-byte q0 direct {acc} nxe {ad}ad root 0 sync"


def format_event(host: Host, event: tuple[Any, ...]) -> str:
    """The text a kernel trace would show after `kvmmmu: <name>: ` for this event."""
    name, *fields = event
    f: list[Any] = list(fields)
    if name == "kvm_mmu_set_spte":
        gfn, spte, level, sptep = (int(x) for x in f)
        return kvm_mmu_set_spte(host, gfn, spte, level, sptep)
    if name == "mark_mmio_spte":
        gfn, access, gen, sptep = (int(x) for x in f)
        return f"sptep:{sptep:#x} gfn {gfn:x} access {access:x} gen {gen:x}"
    if name == "kvm_mmu_spte_requested":
        gfn, pfn, level, access = (int(x) for x in f)
        text = f"gfn {gfn:x} pfn {pfn:x} level {level}"
        if host.layout.trace_spte_requested_has_access:
            text += f" access {access:x}"
        return text
    if name == "kvm_tdp_mmu_spte_changed":
        as_id, gfn, level, old, new = (int(x) for x in f)
        return kvm_tdp_mmu_spte_changed(as_id, gfn, level, old, new)
    if name == "check_mmio_spte":
        spte, kvm_gen, spte_gen, _valid = (int(x) for x in f)
        return check_mmio_spte(spte, kvm_gen, spte_gen)
    if name == "handle_mmio_page_fault":
        addr, gfn, access = (int(x) for x in f)
        return handle_mmio_page_fault(addr, gfn, access)
    if name == "fast_page_fault":
        gpa, error_code, old, new, ret, sptep = f
        code = {"RET_PF_SPURIOUS": RET_PF_SPURIOUS, "RET_PF_FIXED": RET_PF_FIXED}.get(str(ret), 0)
        return fast_page_fault(
            0,
            int(gpa),
            int(error_code),
            f"{int(sptep):#x}",
            int(old),
            int(new),
            code,
        )
    if name == "kvm_mmu_split_huge_page":
        gfn, spte, level, errno = (int(x) for x in f)
        return kvm_mmu_split_huge_page(gfn, spte, level, errno)
    if name in ("kvm_mmu_get_page", "kvm_mmu_prepare_zap_page"):
        gfn, level, _mirror, access = f
        role = page_role(host, int(gfn), int(level), int(access))
        return f"{role} new" if name == "kvm_mmu_get_page" else role
    if name == "kvm_mmu_zap_all_fast":
        valid_gen, used_pages = (int(x) for x in f)
        return f"kvm-mmu-valid-gen {valid_gen} used_pages {used_pages:x}"
    return " ".join(str(x) for x in f)


def ftrace_line(
    host: Host,
    event: tuple[Any, ...],
    *,
    task: str = "kvmmu",
    cpu: int = 0,
    timestamp: float = 0.0,
) -> str:
    """A full ftrace line, as `cat trace` would print it."""
    return (
        f"{task:>16}-0     [{cpu:03d}] .....  {timestamp:12.6f}: {event[0]}: "
        f"{format_event(host, event)}"
    )
