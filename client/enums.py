"""Python enums for the kvmmu.v1 proto enums.

Every member's value is the proto number (so `VmType.TDX == 6`, KVM's
`KVM_X86_TDX_VM` is `VmType.TDX.kvm_type == 5`) and its name is the proto
name without the enum prefix (`FAULT_OUTCOME_FIXED` -> `FaultOutcome.FIXED`).
`UNSPECIFIED` (0) is kept: it is what an unset field reads as.
`label` is the short lower-case spelling the CLI prints and accepts.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag
from typing import Self


class ProtoEnum(IntEnum):
    """Base of the kvmmu enums: proto numbers, CLI labels."""

    @property
    def label(self) -> str:
        """Lower-case name with dashes (e.g. "sw-protected", "fast-zap-all")."""
        return self.name.lower().replace("_", "-")

    @classmethod
    def from_label(cls, text: str) -> Self:
        """The member whose label or name is `text` (case-insensitive); ValueError if none."""
        key = text.strip().lower().replace("_", "-")
        for member in cls:
            if key == member.label:
                return member
        raise ValueError(f"unknown {cls.__name__} {text!r}")

    @classmethod
    def labels(cls) -> list[str]:
        """The labels of every member except UNSPECIFIED."""
        return [m.label for m in cls if m.value != 0]


class TdpRoot(ProtoEnum):
    """Which TDP root an SPTE belongs to (role.is_mirror); MIRROR exists only for TDX."""

    UNSPECIFIED = 0
    DIRECT = 1
    MIRROR = 2


class FaultOutcome(ProtoEnum):
    """Result of a page-fault step under KVM's names (RET_PF_*, or a positive errno)."""

    UNSPECIFIED = 0
    RETRY = 1
    EMULATE = 2
    WRITE_PROTECTED = 3
    INVALID = 4
    FIXED = 5
    SPURIOUS = 6
    ENOMEM = 12
    EFAULT = 14
    EINVAL = 22

    @property
    def kernel_name(self) -> str:
        """RET_PF_FIXED, ..., or -EFAULT for the errno outcomes."""
        if self.value > 6:
            return f"-{self.name}"
        return f"RET_PF_{self.name}"


class KernelLayout(ProtoEnum):
    """The host kernel's SPTE bit layout."""

    UNSPECIFIED = 0
    V6 = 1
    MBEC = 2


class CpuVendor(ProtoEnum):
    """Which vendor module is loaded (kvm_intel or kvm_amd)."""

    UNSPECIFIED = 0
    INTEL = 1
    AMD = 2


class MmuKind(ProtoEnum):
    """Paging mode of the host's MMU: EPT, NPT or shadow paging."""

    UNSPECIFIED = 0
    EPT = 1
    NPT = 2
    SHADOW = 3


class VmType(ProtoEnum):
    """KVM x86 VM type; the value is the proto number, KVM's type is `kvm_type`."""

    UNSPECIFIED = 0
    DEFAULT = 1
    SW_PROTECTED = 2
    SEV = 3
    SEV_ES = 4
    SNP = 5
    TDX = 6

    @property
    def kvm_type(self) -> int:
        """The KVM_CREATE_VM type number (KVM_X86_DEFAULT_VM = 0 ... KVM_X86_TDX_VM = 5)."""
        return max(self.value - 1, 0)


class VmView(ProtoEnum):
    """How much of a VM GetVm/ListVms return (FULL adds the stats)."""

    UNSPECIFIED = 0
    BASIC = 1
    FULL = 2


class BackingPageSize(ProtoEnum):
    """Size of the host pages backing a memslot (host_pfn_mapping_level)."""

    UNSPECIFIED = 0
    SIZE_4K = 1
    SIZE_2M = 2
    SIZE_1G = 3

    @property
    def label(self) -> str:
        """ "4K", "2M" or "1G" ("unspecified" for 0)."""
        return "unspecified" if self.value == 0 else self.name.removeprefix("SIZE_")

    @classmethod
    def from_label(cls, text: str) -> BackingPageSize:
        """The member for "4K"/"2M"/"1G" (case-insensitive) or a member name."""
        key = text.strip().upper()
        for member in cls:
            if key in (member.name, member.label.upper()):
                return member
        raise ValueError(f"unknown BackingPageSize {text!r}")


class MemslotChange(ProtoEnum):
    """Which kvm_mr_change KVM performed."""

    UNSPECIFIED = 0
    CREATE = 1
    DELETE = 2
    MOVE = 3
    FLAGS_ONLY = 4


class MemslotChangeResult(ProtoEnum):
    """How a memslot change ended (applied, no-op, or a MOVE KVM reverted)."""

    UNSPECIFIED = 0
    APPLIED = 1
    NOOP = 2
    MOVE_REVERTED = 3


class MemslotZap(ProtoEnum):
    """How kvm_arch_flush_shadow_memslot zapped for a delete or move."""

    UNSPECIFIED = 0
    NONE = 1
    FAST_ZAP_ALL = 2
    SLOT_RANGE = 3


class MemoryAttributesResult(ProtoEnum):
    """Result of a KVM_SET_MEMORY_ATTRIBUTES call."""

    UNSPECIFIED = 0
    APPLIED = 1
    NOOP = 2


class SpteKind(ProtoEnum):
    """What an SPTE value is, in the terms of spte.h's predicates."""

    UNSPECIFIED = 0
    NON_PRESENT = 1
    MMIO = 2
    LEAF = 3
    NON_LEAF = 4
    FROZEN = 5


class SpteFieldKind(ProtoEnum):
    """What a bit field of an SPTE is used for."""

    UNSPECIFIED = 0
    PERMISSION = 1
    MEMORY_TYPE = 2
    ACCESSED_DIRTY = 3
    SOFTWARE = 4
    ADDRESS = 5
    ENCRYPTION = 6
    MMIO_GENERATION = 7
    MMIO_PATTERN = 8
    RESERVED = 9
    IGNORED = 10


class HealthStatus(ProtoEnum):
    """grpc.health.v1 serving status."""

    UNKNOWN = 0
    SERVING = 1
    NOT_SERVING = 2
    SERVICE_UNKNOWN = 3


class ErrorCode(IntFlag):
    """PFERR_* bits of a page-fault error code (asm/kvm_host.h), for `Client.fault`.

    Combine with `|`: `ErrorCode.WRITE | ErrorCode.USER`.
    """

    PRESENT = 1 << 0
    WRITE = 1 << 1
    USER = 1 << 2
    RSVD = 1 << 3
    FETCH = 1 << 4
    PRIVATE = 1 << 49


__all__ = [
    "BackingPageSize",
    "CpuVendor",
    "ErrorCode",
    "FaultOutcome",
    "HealthStatus",
    "KernelLayout",
    "MemoryAttributesResult",
    "MemslotChange",
    "MemslotChangeResult",
    "MemslotZap",
    "MmuKind",
    "ProtoEnum",
    "SpteFieldKind",
    "SpteKind",
    "TdpRoot",
    "VmType",
    "VmView",
]
