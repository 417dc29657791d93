"""decode_spte: a named, field-by-field breakdown of any 64-bit value.

What the API, CLI, trace annotator and diagrams show. The value is read for
a given host and VM MMIO value (and, when known, the level of the table it
sits in). Every one of the 64 bits belongs to exactly one field, fields are
in bit order, and `reasons` say why the value is the kind it is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple

from mmu.bits import GENMASK
from mmu.constants import (
    EPT_MT_MASK,
    MTRR_TYPE_NAMES,
    PT_PAGE_SIZE_MASK,
    SHADOW_NONPRESENT_OR_RSVD_MASK_LEN,
    SHADOW_NONPRESENT_VALUE,
    SPTE_MMU_PRESENT_MASK,
    VMX_EPT_RWX_MASK,
)
from mmu.host import Host
from mmu.mmio import (
    MmioVm,
    get_mmio_spte_access,
    get_mmio_spte_generation,
    get_mmio_spte_gfn,
    is_mmio_spte,
)
from mmu.spte import (
    is_access_track_spte,
    is_executable_pte,
    is_large_pte,
    is_shadow_present_pte,
    spte_ad_enabled,
    spte_to_pfn,
)
from mmu.trace import spte_access_letters


class SpteKind(StrEnum):
    NON_PRESENT = "non-present"
    MMIO = "mmio"
    LEAF = "leaf"
    NON_LEAF = "non-leaf"
    FROZEN = "frozen"


class FieldKind(StrEnum):
    PERMISSION = "permission"
    MEMORY_TYPE = "memory-type"
    ACCESSED_DIRTY = "accessed-dirty"
    SOFTWARE = "software"
    ADDRESS = "address"
    ENCRYPTION = "encryption"
    MMIO_GENERATION = "mmio-generation"
    MMIO_PATTERN = "mmio-pattern"
    RESERVED = "reserved"
    IGNORED = "ignored"


class SpteField(NamedTuple):
    """One named run of bits of an SPTE (a NamedTuple: decoded dumps build millions)."""

    name: str
    lsb: int
    msb: int
    value: int
    kind: FieldKind
    meaning: str

    @property
    def width(self) -> int:
        return self.msb - self.lsb + 1


@dataclass(frozen=True, slots=True)
class SpteDecode:
    value: int
    kind: SpteKind
    level: int | None
    fields: tuple[SpteField, ...]
    reasons: tuple[str, ...]
    verdict: str
    is_mmio_for_vm: bool
    present: bool
    pfn: int | None = None
    access: str | None = None
    mmio_gfn: int | None = None
    mmio_access: int | None = None
    mmio_generation: int | None = None
    reserved_bits: int | None = None
    misconfig: tuple[str, ...] = field(default=())

    @property
    def summary(self) -> str:
        parts = [f"{self.value:#018x}", self.kind.value]
        if self.level is not None:
            parts.append(f"level {self.level}")
        if self.pfn is not None:
            parts.append(f"pfn {self.pfn:#x}")
        if self.access:
            parts.append(f"({self.access})")
        if self.mmio_gfn is not None:
            parts.append(f"gfn {self.mmio_gfn:#x} gen {self.mmio_generation:#x}")
        return " ".join(parts)


@dataclass(slots=True)
class _Claim:
    name: str
    kind: FieldKind
    meaning: Meaning


_IGNORED = _Claim("ignored", FieldKind.IGNORED, "not used")
Template = tuple[tuple[int, int, _Claim], ...]


class _Fields:
    """Bits claimed by named fields; later claims win, gaps become 'ignored'.

    The claims of a host and SPTE shape form a template that is built once;
    rendering a value only extracts bits and evaluates the meanings.
    """

    def __init__(self) -> None:
        self.owner: list[_Claim] = [_IGNORED] * 64

    def claim(self, lsb: int, msb: int, name: str, kind: FieldKind, meaning: Meaning = "") -> None:
        entry = _Claim(name, kind, meaning)
        for bit in range(lsb, msb + 1):
            self.owner[bit] = entry

    def claim_mask(self, mask: int, name: str, kind: FieldKind, meaning: Meaning = "") -> None:
        for lsb, msb in _runs(mask):
            self.claim(lsb, msb, name, kind, meaning)

    def template(self) -> Template:
        out: list[tuple[int, int, _Claim]] = []
        bit = 0
        while bit < 64:
            owner = self.owner[bit]
            end = bit
            while end + 1 < 64 and self.owner[end + 1] is owner:
                end += 1
            out.append((bit, end, owner))
            bit = end + 1
        return tuple(out)


def _render(template: Template, value: int) -> tuple[SpteField, ...]:
    return tuple(
        [
            SpteField(
                claim.name,
                lsb,
                msb,
                (value >> lsb) & ((1 << (msb - lsb + 1)) - 1),
                claim.kind,
                claim.meaning if isinstance(claim.meaning, str) else claim.meaning(value),
            )
            for lsb, msb, claim in template
        ]
    )


def _runs(mask: int) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    bit = 0
    while mask >> bit:
        if (mask >> bit) & 1:
            start = bit
            while (mask >> (bit + 1)) & 1:
                bit += 1
            runs.append((start, bit))
        bit += 1
    return runs


Meaning = str | Callable[[int], str]


def _onoff(mask: int, yes: str, no: str) -> Callable[[int], str]:
    return lambda value: yes if value & mask else no


def _claim_address(f: _Fields, host: Host, leaf: bool) -> None:
    label = "PFN" if leaf else "child table"
    f.claim(
        12, 51, label, FieldKind.ADDRESS, lambda v: f"host physical frame {spte_to_pfn(host, v):#x}"
    )
    if host.shadow_me_mask:
        cbit = host.shadow_me_value
        if cbit:
            f.claim_mask(
                cbit,
                "C-bit",
                FieldKind.ENCRYPTION,
                _onoff(cbit, "encrypted (SME/SEV C-bit)", "not encrypted"),
            )
        else:
            f.claim_mask(
                host.shadow_me_mask,
                "key ID",
                FieldKind.ENCRYPTION,
                "MKTME/TDX key-ID bits (KVM never sets them)",
            )


def _claim_software_bits(f: _Fields, host: Host) -> None:
    layout = host.layout
    f.claim(
        11,
        11,
        "MMU-present",
        FieldKind.SOFTWARE,
        _onoff(
            SPTE_MMU_PRESENT_MASK,
            "KVM treats the SPTE as present",
            "clear: KVM treats the SPTE as not present",
        ),
    )
    f.claim_mask(
        host.shadow_host_writable_mask,
        "host-writable",
        FieldKind.SOFTWARE,
        _onoff(
            host.shadow_host_writable_mask,
            "host mapping is writable",
            "host mapping is read-only",
        ),
    )
    f.claim_mask(
        host.shadow_mmu_writable_mask,
        "MMU-writable",
        FieldKind.SOFTWARE,
        _onoff(
            host.shadow_mmu_writable_mask,
            "KVM may make it writable (e.g. after dirty-log write protection)",
            "KVM must not make it writable",
        ),
    )
    if host.config.mmu == "ept":
        names = {
            0: "A/D enabled",
            1: "A/D disabled (access tracking)",
            2: "write-protect-only dirty tracking",
            3: "invalid A/D type",
        }
        f.claim_mask(
            layout.ad_mask,
            "A/D type",
            FieldKind.SOFTWARE,
            lambda v: names[(v & layout.ad_mask) >> layout.ad_shift],
        )
        saved = layout.acc_track_saved_bits_mask
        shift = layout.acc_track_saved_bits_shift
        for bit, label in ((0x1, "R"), (0x4, "X"), (0x400, "XU")):
            if saved & bit:
                f.claim_mask(
                    bit << shift,
                    f"saved {label}",
                    FieldKind.SOFTWARE,
                    f"{label} saved while access-tracked",
                )


def _claim_ept_leaf(f: _Fields, host: Host, leaf: bool) -> None:
    f.claim(0, 0, "R", FieldKind.PERMISSION, _onoff(1, "readable", "not readable"))
    f.claim(1, 1, "W", FieldKind.PERMISSION, _onoff(2, "writable", "not writable"))
    xname = "XS" if host.shadow_xu_mask else "X"
    f.claim(2, 2, xname, FieldKind.PERMISSION, _onoff(4, "executable", "not executable"))
    if leaf:
        f.claim(
            3,
            5,
            "memory type",
            FieldKind.MEMORY_TYPE,
            lambda v: MTRR_TYPE_NAMES.get((v >> 3) & 7, f"reserved memory type {(v >> 3) & 7}"),
        )
        f.claim(
            6,
            6,
            "IPAT",
            FieldKind.MEMORY_TYPE,
            _onoff(0x40, "ignore guest PAT", "guest PAT combined"),
        )
    else:
        f.claim(3, 6, "reserved", FieldKind.RESERVED, "must be 0 in a non-leaf entry")
    f.claim(
        7,
        7,
        "PS",
        FieldKind.PERMISSION if leaf else FieldKind.RESERVED,
        _onoff(PT_PAGE_SIZE_MASK, "large page", "points to a table or is a 4K page"),
    )
    f.claim(8, 8, "A", FieldKind.ACCESSED_DIRTY, _onoff(0x100, "accessed", "not accessed"))
    f.claim(9, 9, "D", FieldKind.ACCESSED_DIRTY, _onoff(0x200, "dirty", "clean"))
    if host.shadow_xu_mask:
        f.claim(
            10,
            10,
            "XU",
            FieldKind.PERMISSION,
            _onoff(0x400, "user-mode executable", "not user-mode executable"),
        )
    f.claim(
        63,
        63,
        "SVE",
        FieldKind.PERMISSION,
        _onoff(1 << 63, "suppress #VE", "#VE not suppressed"),
    )


def _claim_x86_leaf(f: _Fields, host: Host, leaf: bool) -> None:
    f.claim(0, 0, "P", FieldKind.PERMISSION, _onoff(1, "present", "not present"))
    f.claim(1, 1, "W", FieldKind.PERMISSION, _onoff(2, "writable", "read-only"))
    f.claim(2, 2, "U", FieldKind.PERMISSION, _onoff(4, "user", "supervisor"))
    f.claim(3, 3, "PWT", FieldKind.MEMORY_TYPE, _onoff(8, "write-through", "write-back"))
    f.claim(4, 4, "PCD", FieldKind.MEMORY_TYPE, _onoff(0x10, "cache disabled", "cacheable"))
    f.claim(5, 5, "A", FieldKind.ACCESSED_DIRTY, _onoff(0x20, "accessed", "not accessed"))
    f.claim(6, 6, "D", FieldKind.ACCESSED_DIRTY, _onoff(0x40, "dirty", "clean"))
    f.claim(
        7,
        7,
        "PS",
        FieldKind.PERMISSION,
        _onoff(PT_PAGE_SIZE_MASK, "large page", "points to a table or is a 4K page"),
    )
    f.claim(8, 8, "G", FieldKind.PERMISSION, _onoff(0x100, "global", "not global"))
    f.claim(63, 63, "NX", FieldKind.PERMISSION, _onoff(1 << 63, "not executable", "executable"))


_TEMPLATES: dict[tuple[int, int, bool, bool], tuple[Host, Template]] = {}


def _cached(host: Host, mmio_value: int, mmio: bool, leaf: bool) -> Template:
    """Templates depend only on the host, the VM's MMIO value and the SPTE's shape."""
    key = (id(host), mmio_value, mmio, leaf)
    hit = _TEMPLATES.get(key)
    if hit is not None and hit[0] is host:
        return hit[1]
    f = _Fields()
    if mmio:
        _claim_mmio(f, host, mmio_value)
    else:
        if host.config.mmu == "ept":
            _claim_ept_leaf(f, host, leaf)
        else:
            _claim_x86_leaf(f, host, leaf)
        _claim_address(f, host, leaf)
        _claim_software_bits(f, host)
    template = f.template()
    if len(_TEMPLATES) > 256:
        _TEMPLATES.clear()
    _TEMPLATES[key] = (host, template)
    return template


def _present_fields(host: Host, value: int, leaf: bool) -> tuple[SpteField, ...]:
    return _render(_cached(host, 0, False, leaf), value)


def _mmio_fields(vm: MmioVm, value: int) -> tuple[SpteField, ...]:
    return _render(_cached(vm.host, vm.shadow_mmio_value, True, True), value)


def _claim_mmio(f: _Fields, host: Host, mmio_value: int) -> None:
    layout = host.layout
    f.claim_mask(
        host.shadow_nonpresent_or_rsvd_lower_gfn_mask,
        "GPA",
        FieldKind.ADDRESS,
        lambda v: f"guest frame {get_mmio_spte_gfn(host, v):#x} (bits kept in place)",
    )
    rsvd = host.shadow_nonpresent_or_rsvd_mask
    if rsvd:
        f.claim_mask(
            rsvd,
            "L1TF mask",
            FieldKind.RESERVED,
            "set to all ones so the frame points at unpopulated memory",
        )
        f.claim_mask(
            rsvd << SHADOW_NONPRESENT_OR_RSVD_MASK_LEN,
            "relocated GPA",
            FieldKind.ADDRESS,
            "GPA bits moved 5 up by the L1TF mitigation",
        )
    f.claim_mask(
        layout.mmio_gen_low_mask,
        "gen[low]",
        FieldKind.MMIO_GENERATION,
        lambda v: f"MMIO generation {get_mmio_spte_generation(layout, v):#x} (low bits)",
    )
    f.claim_mask(
        layout.mmio_gen_high_mask,
        "gen[high]",
        FieldKind.MMIO_GENERATION,
        lambda v: f"MMIO generation {get_mmio_spte_generation(layout, v):#x} (high bits)",
    )
    mask = host.shadow_mmio_mask
    f.claim_mask(
        mask,
        "MMIO pattern",
        FieldKind.MMIO_PATTERN,
        f"(spte & {mask:#x}) must equal the VM's MMIO value {mmio_value:#x}",
    )
    if host.shadow_mmio_access_mask:
        f.claim_mask(
            host.shadow_mmio_access_mask,
            "access",
            FieldKind.PERMISSION,
            lambda v: f"cached guest access {get_mmio_spte_access(host, v):#x} (W/U)",
        )
    f.claim(11, 11, "MMU-present", FieldKind.SOFTWARE, "clear: MMIO SPTEs are never present")


def _pattern_story(host: Host, pattern: int) -> str:
    if host.config.mmu == "ept":
        rwx = pattern & VMX_EPT_RWX_MASK
        if rwx == 0:
            return (
                "RWX=000 and SVE clear: an EPT violation the CPU reflects into the guest as "
                "#VE (how a TDX guest sees MMIO)"
            )
        if rwx in (0x2, 0x6):
            return f"XWR={rwx:03b} (write without read): an EPT misconfiguration exit"
        return f"XWR={rwx:03b}"
    return "reserved physical-address bits set with P: a #NPF/#PF with PFERR_RSVD"


def _misconfig(host: Host, value: int, level: int | None) -> tuple[list[str], int | None]:
    """EPT misconfiguration patterns and reserved bits, as is_rsvd_spte sees them."""
    if host.rsvd is None:
        return [], None
    notes: list[str] = []
    if host.config.mmu == "ept":
        low = value & 0x3F
        if host.rsvd.fold_xu_into_x and value & 0x400:
            low |= 0x4
        xwr, mt = low & 7, low >> 3
        if xwr in (0x2, 0x6):
            notes.append(f"XWR={xwr:03b}: write without read is an EPT misconfiguration")
        elif xwr == 0x4:
            notes.append("XWR=100: execute-only, which KVM's TDP table treats as reserved")
        if mt in (2, 3, 7) and (xwr or level == 1):
            notes.append(f"memory type {mt} is reserved")
    rsvd_mask = host.rsvd.mask_for(value, level or 1) & value
    if rsvd_mask:
        notes.append(f"reserved bits {rsvd_mask:#x} set for level {level or 1}")
    return notes, rsvd_mask


def decode_spte(vm: MmioVm, value: int, level: int | None = None) -> SpteDecode:
    """Explain `value` as KVM would read it in `vm` (at `level`, if known)."""
    host = vm.host
    layout = host.layout
    mmio = is_mmio_spte(vm, value)
    present = is_shadow_present_pte(value)
    mask, vm_value = host.shadow_mmio_mask, vm.shadow_mmio_value
    reasons: list[str] = []
    if value == layout.frozen_spte:
        return SpteDecode(
            value,
            SpteKind.FROZEN,
            level,
            _present_fields(host, value, True),
            (
                f"FROZEN_SPTE {layout.frozen_spte:#x}: a TDP MMU thread is mid-update; "
                "others back off and retry",
            ),
            "frozen SPTE",
            False,
            False,
        )
    if mmio:
        gen = get_mmio_spte_generation(layout, value)
        reasons.append(f"MMIO: (spte & mmio_mask {mask:#x}) == VM MMIO value {vm_value:#x}")
        reasons.append(_pattern_story(host, value & mask))
        reasons.append(
            f"tagged with memslot generation {gen:#x}; stale once the VM's generation moves on"
        )
        return SpteDecode(
            value,
            SpteKind.MMIO,
            level,
            _mmio_fields(vm, value),
            tuple(reasons),
            f"MMIO SPTE for this VM: (spte & {mask:#x}) == {vm_value:#x}",
            True,
            False,
            mmio_gfn=get_mmio_spte_gfn(host, value),
            mmio_access=get_mmio_spte_access(host, value),
            mmio_generation=gen,
        )
    if value == SHADOW_NONPRESENT_VALUE:
        return SpteDecode(
            value,
            SpteKind.NON_PRESENT,
            level,
            _present_fields(host, value, True),
            (
                "SHADOW_NONPRESENT_VALUE: the value of every empty SPTE (bit 63 keeps EPT "
                "suppress-#VE set, so a TD's access still exits to KVM)",
            ),
            "empty SPTE",
            False,
            False,
        )
    leaf = level is None or level == 1 or is_large_pte(value)
    if level is None and not is_large_pte(value):
        reasons.append(
            "level not given: read as a 4K leaf (give a level > 1 to read it as a "
            "pointer to a table)"
        )
    fields = _present_fields(host, value, leaf)
    notes, rsvd_bits = _misconfig(host, value, level)
    access = spte_access_letters(host, value) if leaf else None
    if present:
        kind = SpteKind.LEAF if leaf else SpteKind.NON_LEAF
        where = f"level {level}" if level else ("a huge page" if is_large_pte(value) else "4K")
        reasons.insert(0, f"present {kind.value} SPTE at {where} (bit 11 SPTE_MMU_PRESENT set)")
        if leaf:
            ad = "A/D enabled" if spte_ad_enabled(layout, value) else "A/D disabled"
            tracked = " and access-tracked" if is_access_track_spte(host, value) else ""
            reasons.append(f"{ad}{tracked}; executable: {is_executable_pte(host, value)}")
        verdict = f"present {kind.value} SPTE at {where}, pfn {spte_to_pfn(host, value):#x}"
        if access:
            verdict += f" ({access})"
    else:
        kind = SpteKind.NON_PRESENT
        reasons.insert(0, "bit 11 (SPTE_MMU_PRESENT) clear: KVM treats it as not present")
        if (value & mask) == host.shadow_mmio_value and host.shadow_mmio_value != vm_value:
            reasons.append(
                f"matches the host's MMIO value {host.shadow_mmio_value:#x} but this "
                f"VM's MMIO value is {vm_value:#x}: not an MMIO SPTE for this VM"
            )
        elif (value & mask) == vm_value and not host.enable_mmio_caching:
            reasons.append("matches the MMIO pattern, but MMIO caching is disabled")
        else:
            reasons.append(
                f"not MMIO for this VM: (spte & {mask:#x}) = {value & mask:#x}, "
                f"VM MMIO value {vm_value:#x}"
            )
            if (value & mask) == 0 and host.tdx_allowed and host.config.tdx_module:
                reasons.append(
                    "(spte & mask) == 0: this would be an MMIO SPTE in a TDX VM, "
                    "whose MMIO value is 0"
                )
        verdict = "not present"
    reasons.extend(notes)
    return SpteDecode(
        value,
        kind,
        level,
        fields,
        tuple(reasons),
        verdict,
        False,
        present,
        pfn=spte_to_pfn(host, value) if present else None,
        access=access,
        reserved_bits=rsvd_bits,
        misconfig=tuple(notes),
    )


def field_mask(f: SpteField) -> int:
    return GENMASK(f.msb, f.lsb)


__all__ = ["EPT_MT_MASK", "FieldKind", "SpteDecode", "SpteField", "SpteKind", "decode_spte"]
