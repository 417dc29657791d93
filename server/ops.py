"""Operation records: every state change the API can make, as small frozen data.

Each state-changing RPC becomes exactly one of these, and `server.apply.apply`
is the only code that applies one to the registry. They carry everything the
change depends on (a server-assigned VM id, the creation time), so replaying
the same records in commit order rebuilds the same state: the journal of the
durability issue stores `op_to_dict(op)` and replays `op_from_dict(...)`.
No gRPC here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Generic, Literal, TypeVar

import numpy as np
import numpy.typing as npt

from mmu.dirty_log import DirtyLog
from mmu.fault import FaultResult
from mmu.fault_batch import BatchResult
from mmu.memslot_ops import MemslotResult
from mmu.memslots import Memslot
from mmu.vm import AgeResult, OpResult

R = TypeVar("R")
U64Array = npt.NDArray[np.uint64]
ZapKind = Literal["range", "all", "slot"]
MemslotChange = Literal["none", "create", "delete", "move", "flags_only"]


@dataclass(frozen=True, slots=True)
class VmInfo:
    """A consistent snapshot of one VM, taken under its lock."""

    vm_id: str
    display_name: str
    vm_type: int
    mmio_value: int
    guest_maxphyaddr: int
    tdp_root_level: int
    nr_memslot_as_ids: int
    memslots_generation: int
    create_time_ns: int
    tracing: bool
    gfn_direct_bits: int
    slot_zap_all_quirk: bool
    mt_bits: int
    initial_generation: int
    tdp_has_smep: bool | None
    tdp_root_access: int | None
    stats: dict[str, int]


@dataclass(frozen=True, slots=True)
class MmioValueResult:
    vm: VmInfo
    spte_changes: int


@dataclass(frozen=True, slots=True)
class MemslotChangeResult:
    """Which kvm_mr_change was made (or "none" for an identical request) and what it did."""

    change: MemslotChange
    result: MemslotResult


@dataclass(frozen=True, slots=True)
class AttributesResult:
    noop: bool
    spte_changes: int


@dataclass(frozen=True, slots=True)
class FaultReply:
    """A fault's result, and the sequence number of its first event in the VM's log
    (0 when the VM is not tracing, so the events were not logged)."""

    result: FaultResult
    first_sequence: int


@dataclass(frozen=True, slots=True)
class DirtyLogResult:
    slot: Memslot
    log: DirtyLog


@dataclass(frozen=True, slots=True)
class Op(Generic[R]):
    """Base of every operation record; `vm_id` is the VM it changes."""

    name: ClassVar[str] = ""
    vm_id: str


@dataclass(frozen=True, slots=True)
class CreateVm(Op[VmInfo]):
    name: ClassVar[str] = "create_vm"
    vm_type: int = 0
    display_name: str = ""
    guest_maxphyaddr: int | None = None
    mt_bits: int | None = None
    slot_zap_all_quirk: bool = True
    initial_generation: int = 0
    tracing: bool = False
    create_time_ns: int = 0


@dataclass(frozen=True, slots=True)
class DeleteVm(Op[None]):
    name: ClassVar[str] = "delete_vm"


@dataclass(frozen=True, slots=True)
class UpdateVm(Op[VmInfo]):
    name: ClassVar[str] = "update_vm"
    display_name: str | None = None
    tracing: bool | None = None


@dataclass(frozen=True, slots=True)
class SetMmioValue(Op[MmioValueResult]):
    name: ClassVar[str] = "set_mmio_value"
    value: int = 0
    zap_existing: bool = False


@dataclass(frozen=True, slots=True)
class SetMemslot(Op[MemslotChangeResult]):
    name: ClassVar[str] = "set_memslot"
    slot: Memslot


@dataclass(frozen=True, slots=True)
class DeleteMemslot(Op[MemslotChangeResult]):
    name: ClassVar[str] = "delete_memslot"
    slot_id: int = 0


@dataclass(frozen=True, slots=True)
class SetMemoryAttributes(Op[AttributesResult]):
    name: ClassVar[str] = "set_memory_attributes"
    start_gfn: int = 0
    end_gfn: int = 0
    private: bool = False


@dataclass(frozen=True, slots=True)
class Fault(Op[FaultReply]):
    name: ClassVar[str] = "fault"
    gpa: int = 0
    error_code: int = 0
    explain: bool = False


@dataclass(frozen=True, slots=True, eq=False)
class BatchFault(Op[BatchResult]):
    """Faults in order; error_codes is None when every fault uses shared_error_code."""

    name: ClassVar[str] = "batch_fault"
    gpas: U64Array = field(default_factory=lambda: np.zeros(0, np.uint64))
    error_codes: U64Array | None = None
    shared_error_code: int = 0


@dataclass(frozen=True, slots=True)
class Zap(Op[OpResult]):
    name: ClassVar[str] = "zap"
    kind: ZapKind = "all"
    start_gfn: int = 0
    end_gfn: int = 0
    slot_id: int = 0


@dataclass(frozen=True, slots=True)
class GetDirtyLog(Op[DirtyLogResult]):
    name: ClassVar[str] = "get_dirty_log"
    slot_id: int = 0


@dataclass(frozen=True, slots=True)
class Age(Op[AgeResult]):
    name: ClassVar[str] = "age"
    start_gfn: int = 0
    end_gfn: int = 0
    test_only: bool = False


OP_TYPES: dict[str, type[Op[Any]]] = {
    cls.name: cls
    for cls in (
        CreateVm,
        DeleteVm,
        UpdateVm,
        SetMmioValue,
        SetMemslot,
        DeleteMemslot,
        SetMemoryAttributes,
        Fault,
        BatchFault,
        Zap,
        GetDirtyLog,
        Age,
    )
}


def op_to_dict(op: Op[Any]) -> dict[str, Any]:
    """A JSON-ready dict: {"op": name, field: value, ...}."""
    out: dict[str, Any] = {"op": op.name}
    for f in fields(op):
        value = getattr(op, f.name)
        if isinstance(value, np.ndarray):
            value = value.tolist()
        elif isinstance(value, Memslot):
            value = asdict(value)
        out[f.name] = value
    return out


def op_from_dict(data: dict[str, Any]) -> Op[Any]:
    """The inverse of op_to_dict."""
    values = dict(data)
    cls = OP_TYPES[values.pop("op")]
    if cls is SetMemslot:
        values["slot"] = Memslot(**values["slot"])
    if cls is BatchFault:
        values["gpas"] = np.asarray(values["gpas"], dtype=np.uint64)
        if values.get("error_codes") is not None:
            values["error_codes"] = np.asarray(values["error_codes"], dtype=np.uint64)
    return cls(**values)
