"""Hypothesis strategies over every MmuService request: random, boundary and malformed.

`requests(target)` draws (method, payload bytes) pairs. Per method it mixes a
hand-written strategy that knows what is interesting there (GPAs at and past
the guest's physical bits, sizes of 0 / 2^40 / 2^63 / unaligned, memslots that
overlap the ones set up, MMIO values outside the host's mask, unknown enum
numbers, empty and malformed names), a generic one built from the message
descriptor (any field, boundary values, unknown enum numbers), and raw
garbage bytes. WatchEvents never follows (it would wait for events).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message
from hypothesis import strategies as st

from kvmmu.v1 import (
    events_pb2,
    fault_pb2,
    host_pb2,
    memslot_pb2,
    service_pb2,
    spte_pb2,
    vm_pb2,
)
from server.names import VM_ID_RE

SERVICE = service_pb2.DESCRIPTOR.services_by_name["MmuService"]
MODULES = (events_pb2, fault_pb2, host_pb2, memslot_pb2, spte_pb2, vm_pb2)
REQUEST_TYPES: dict[str, type[Message]] = {
    m.name: getattr(mod, m.input_type.name)
    for m in SERVICE.methods
    for mod in MODULES
    if hasattr(mod, m.input_type.name)
}
STREAMING = frozenset(m.name for m in SERVICE.methods if m.server_streaming)
U64_MAX = (1 << 64) - 1
FUZZ_VM_IDS = tuple(f"fz{i}" for i in range(6))
GiB = 1 << 30


@dataclass(frozen=True)
class Target:
    """What the fuzzed server holds before the run: VMs and their memslots."""

    vms: tuple[str, ...]  # names "vms/{id}" of the VMs set up
    maxphyaddr: int  # their guest MAXPHYADDR
    slots: tuple[tuple[int, int, int], ...]  # (slot, guest_phys_addr, memory_size) in each
    mmio_mask: int  # the host's shadow_mmio_mask


def u64(*interesting: int) -> st.SearchStrategy[int]:
    edges = [0, 1, 2, 0xFFF, 0x1000, 0x1001, (1 << 32) - 1, 1 << 32, 1 << 52, 1 << 63, U64_MAX]
    return st.one_of(
        st.sampled_from(sorted({*edges, *(v & U64_MAX for v in interesting)})),
        st.integers(0, U64_MAX),
        st.integers(0, 1 << 21),
    )


def i32() -> st.SearchStrategy[int]:
    return st.one_of(
        st.sampled_from([-(1 << 31), -1, 0, 1, 2, 5, 100, 1000, 1001, (1 << 31) - 1]),
        st.integers(-(1 << 31), (1 << 31) - 1),
    )


def enum(known: int) -> st.SearchStrategy[int]:
    """Known values 0..known, and unknown ones (proto3 enums are open)."""
    return st.one_of(st.integers(0, known), st.sampled_from([known + 1, 99, (1 << 31) - 1, -1]))


JUNK_NAMES = (
    "", "vms/", "vms", "vms/nope", "vms/a/b", "VMS/fz0", "vms/fz0/", "vms/" + "a" * 300,
    "\x00", "vms/\x00", "vms/é", "host", "hostProfiles/intel-ept", "vms/*", "../vms/fz0",
)  # fmt: skip


def vm_names(target: Target) -> st.SearchStrategy[str]:
    # Hypothesis favours simple values (the empty string) more than branch counts
    # suggest: the set-up VMs get most branches, so deep paths stay in reach.
    return st.one_of(
        st.sampled_from(target.vms),
        st.sampled_from(target.vms),
        st.sampled_from(target.vms),
        st.sampled_from(target.vms),
        st.sampled_from(target.vms),
        st.sampled_from([f"vms/{i}" for i in FUZZ_VM_IDS]),
        st.sampled_from(JUNK_NAMES),
        st.text(max_size=12),
    )


def slot_names(target: Target) -> st.SearchStrategy[str]:
    slot = st.one_of(
        st.sampled_from([str(s) for s, _, _ in target.slots]),
        st.sampled_from(["7", "32767", "32768", "65537", "-1", "", "x", "00", "4294967296"]),
    )
    known = st.sampled_from([f"{vm}/memslots/{s}" for vm in target.vms for s, _, _ in target.slots])
    return st.one_of(
        known,
        known,
        st.builds(lambda vm, s: f"{vm}/memslots/{s}", vm_names(target), slot),
        st.sampled_from(JUNK_NAMES),
    )


def gpas(target: Target) -> st.SearchStrategy[int]:
    top = 1 << target.maxphyaddr
    near = [
        gpa + delta for _, gpa, size in target.slots for delta in (0, 0x1000, size - 0x1000, size)
    ]
    inside = st.builds(
        lambda slot, offset: slot[1] + (offset % slot[2]),
        st.sampled_from(target.slots),
        st.integers(0, U64_MAX),
    )
    return st.one_of(
        st.sampled_from([*near, top - 0x1000, top, top + 0x1000, 1 << 51, 1 << 52, U64_MAX]),
        inside,
        inside,
        u64(),
    )


def error_codes() -> st.SearchStrategy[int]:
    bits = [0, 1, 2, 3, 4, 5, 6, 15, 31, 32, 33, 34, 48, 49, 63]
    return st.one_of(
        st.integers(0, 0x3F),
        st.builds(lambda chosen: sum(1 << b for b in chosen), st.sets(st.sampled_from(bits))),
        u64(),
    )


def gfn_range(target: Target) -> st.SearchStrategy[Any]:
    from kvmmu.v1 import common_pb2  # noqa: PLC0415

    gfn = st.one_of(gpas(target).map(lambda g: g >> 12), u64())
    span = st.one_of(st.integers(1, 1 << 19), st.sampled_from([1 << 18, 1 << 30, 1 << 40]))
    sane = st.builds(
        lambda start, length: common_pb2.GfnRange(
            start_gfn=start, end_gfn=min(start + length, U64_MAX)
        ),
        gpas(target).map(lambda g: g >> 12),
        span,
    )
    return st.one_of(sane, sane, st.builds(common_pb2.GfnRange, start_gfn=gfn, end_gfn=gfn))


def gpa_range(target: Target) -> st.SearchStrategy[Any]:
    from kvmmu.v1 import common_pb2  # noqa: PLC0415

    return st.builds(common_pb2.GpaRange, address=gpas(target), size=sizes())


def sizes() -> st.SearchStrategy[int]:
    return st.one_of(
        st.sampled_from([0, 0x1000, 0x1001, 0x200000, GiB, 4 * GiB, 1 << 40, 1 << 63, U64_MAX]),
        st.integers(1, 64).map(lambda pages: pages << 12),
        u64(),
    )


def plausible_memslots() -> st.SearchStrategy[memslot_pb2.Memslot]:
    """Memslots KVM could accept: aligned, mostly away from the set-up ones."""
    return st.builds(
        lambda slot, gib, pages, backing, dirty, readonly: memslot_pb2.Memslot(
            slot=slot,
            guest_phys_addr=gib * GiB,
            memory_size=pages << 12,
            userspace_addr=0x7F0000000000 + gib * GiB,
            host_pfn_base=gib << 18,
            backing_page_size=backing,  # type: ignore[arg-type]
            log_dirty_pages=dirty,
            readonly=readonly,
        ),
        st.integers(0, 12),
        st.integers(0, 40),
        st.sampled_from([1, 2, 511, 512, 513, 1 << 18]),
        st.integers(0, 3),
        st.booleans(),
        st.booleans(),
    )


def memslots(target: Target) -> st.SearchStrategy[memslot_pb2.Memslot]:
    slot_ids = st.one_of(
        st.sampled_from([s for s, _, _ in target.slots]),
        st.integers(0, 12),
        st.sampled_from([32767, 32768, (1 << 16) + 1, (1 << 32) - 1]),
    )

    def build(draw: st.DrawFn) -> memslot_pb2.Memslot:
        msg = memslot_pb2.Memslot(
            slot=draw(slot_ids),
            guest_phys_addr=draw(gpas(target)),
            memory_size=draw(sizes()),
            userspace_addr=draw(u64(0x7F0000000000, 0x7F0000200000)),
            log_dirty_pages=draw(st.booleans()),
            readonly=draw(st.booleans()),
            guest_memfd=draw(st.booleans()),
            host_pfn_base=draw(u64(0x100000)),
            backing_page_size=draw(enum(3)),  # type: ignore[arg-type]
        )
        if draw(st.booleans()):
            msg.gmem_pfn_base = draw(u64(0x200000))
        if draw(st.integers(0, 9)) == 0:
            msg.name = draw(st.sampled_from(JUNK_NAMES))
        return msg

    return st.composite(build)()


def _build(cls: type[Message]) -> Callable[..., Message]:
    def make(**fields: Any) -> Message:
        msg = cls()
        for key, value in fields.items():
            if value is None:
                continue
            if isinstance(value, Message):
                getattr(msg, key).CopyFrom(value)
            elif isinstance(value, list):
                getattr(msg, key).extend(value)
            else:
                setattr(msg, key, value)
        return msg

    return make


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


def semantic(target: Target) -> dict[str, st.SearchStrategy[Message]]:
    """A strategy per method that aims at the interesting values of its fields."""
    vm, slot = vm_names(target), slot_names(target)
    b = {name: _build(cls) for name, cls in REQUEST_TYPES.items()}
    token = st.one_of(
        st.just(""), st.sampled_from(["", "x", "AAAA", "dm1zLzA=", "\x00" * 4, "a" * 500])
    )
    create_vm = st.builds(
        lambda vm_type, bits, quirk, mt, gen, trace, display: vm_pb2.Vm(
            vm_type=vm_type,  # type: ignore[arg-type]
            guest_maxphyaddr=bits,
            slot_zap_all_quirk=quirk,
            mt_bits=mt,
            initial_generation=gen,
            tracing_enabled=trace,
            display_name=display,
        ),
        enum(6),
        st.sampled_from([0, 12, 32, 36, 39, 40, 46, 48, 52, 53, 64, (1 << 32) - 1]),
        st.booleans(),
        u64(0x70, 0x30, 0x7),
        u64((1 << 62) - 2, (1 << 63) - 2),
        st.booleans(),
        st.one_of(st.text(max_size=10), st.just("n" * 1000)),
    )
    return {
        "GetHost": st.builds(
            b["GetHost"], name=st.sampled_from(["", "host", "hosts", *JUNK_NAMES])
        ),
        "ListHostProfiles": st.builds(b["ListHostProfiles"], page_size=i32(), page_token=token),
        "CreateVm": st.builds(
            b["CreateVm"],
            vm_id=st.one_of(
                st.sampled_from(FUZZ_VM_IDS),
                st.sampled_from(["", "A", "-x", "a" * 70, "a b"]),
                # Valid random ids would fill the VM limit with VMs DeleteVm never names.
                st.text(max_size=8).filter(lambda text: not VM_ID_RE.fullmatch(text)),
            ),
            vm=maybe(create_vm),
        ),
        "GetVm": st.builds(b["GetVm"], name=vm, view=enum(2)),
        "ListVms": st.builds(b["ListVms"], page_size=i32(), page_token=token, view=enum(2)),
        "UpdateVm": st.builds(
            lambda name, display, trace, paths: vm_pb2.UpdateVmRequest(
                vm=vm_pb2.Vm(name=name, display_name=display, tracing_enabled=trace),
                update_mask={"paths": paths},
            ),
            vm,
            st.text(max_size=10),
            st.booleans(),
            st.lists(
                st.sampled_from(
                    ["display_name", "tracing_enabled", "vm_type", "name", "", "x.y", "stats"]
                ),
                max_size=3,
            ),
        ),
        "DeleteVm": st.builds(
            b["DeleteVm"],
            name=st.one_of(
                st.sampled_from([f"vms/{i}" for i in FUZZ_VM_IDS]), st.sampled_from(JUNK_NAMES)
            ),
        ),
        "SetMmioValue": st.builds(
            b["SetMmioValue"],
            name=vm,
            value=st.one_of(
                u64(6, target.mmio_mask, ~target.mmio_mask, 1 << 62, 0x8000000000000006),
                st.integers(0, U64_MAX).map(lambda v: v & target.mmio_mask),
                st.integers(0, U64_MAX).map(lambda v: v & target.mmio_mask),
            ),
            zap_existing=st.booleans(),
        ),
        "GetVmStats": st.builds(
            b["GetVmStats"], name=st.one_of(vm.map(lambda n: f"{n}/stats"), vm)
        ),
        "SetMemslot": st.builds(
            b["SetMemslot"],
            parent=vm,
            memslot=st.one_of(plausible_memslots(), plausible_memslots(), maybe(memslots(target))),
        ),
        "GetMemslot": st.builds(b["GetMemslot"], name=slot),
        "DeleteMemslot": st.builds(b["DeleteMemslot"], name=slot),
        "ListMemslots": st.builds(b["ListMemslots"], parent=vm, page_size=i32(), page_token=token),
        "SetMemoryAttributes": st.one_of(
            st.builds(
                b["SetMemoryAttributes"],
                name=vm,
                gfn_range=gfn_range(target),
                private=st.booleans(),
            ),
            st.builds(
                b["SetMemoryAttributes"],
                name=vm,
                gpa_range=gpa_range(target),
                private=st.booleans(),
            ),
            st.builds(b["SetMemoryAttributes"], name=vm),
        ),
        "Fault": st.one_of(
            st.builds(
                b["Fault"],
                name=vm,
                gpa=gpas(target),
                error_code=error_codes(),
                explain=st.booleans(),
            ),
            st.builds(
                lambda name, gpa, flags: fault_pb2.FaultRequest(
                    name=name, gpa=gpa, flags=fault_pb2.ErrorCodeFlags(**flags)
                ),
                vm,
                gpas(target),
                st.fixed_dictionaries(
                    {
                        k: st.booleans()
                        for k in ("present", "write", "user", "rsvd", "fetch", "private")
                    }
                ),
            ),
        ),
        "BatchFault": st.builds(
            b["BatchFault"],
            name=vm,
            gpas=st.lists(gpas(target), max_size=40),
            error_codes=st.one_of(st.just([]), st.lists(error_codes(), max_size=40)),
            shared_error_code=error_codes(),
        ),
        "StreamSptes": st.builds(
            b["StreamSptes"],
            name=vm,
            gfn_range=maybe(gfn_range(target)),
            level=maybe(st.integers(0, 7)),
            only_present=st.booleans(),
            include_non_leaf=st.booleans(),
            root=enum(2),
            chunk_size=st.sampled_from([0, 1, 7, 512, 1 << 17, (1 << 17) + 1, (1 << 32) - 1]),
        ),
        "DecodeSpte": st.one_of(
            st.builds(
                b["DecodeSpte"],
                value=u64(6, target.mmio_mask, 0x8000000000000006),
                vm=vm,
                level=maybe(st.integers(0, 6)),
            ),
            st.builds(
                b["DecodeSpte"],
                value=u64(6, target.mmio_mask),
                host=st.builds(
                    _build(spte_pb2.DecodeHostContext),
                    host_profile=st.sampled_from(
                        [
                            "",
                            "hostProfiles/amd-npt",
                            "hostProfiles/intel-tdx",
                            "hostProfiles/x",
                            "amd-npt",
                        ]
                    ),
                    mmio_value=maybe(u64(6)),
                    memslots_generation=maybe(u64()),
                ),
                level=maybe(st.integers(0, 6)),
            ),
            st.builds(b["DecodeSpte"], value=u64()),
        ),
        "ZapSptes": st.one_of(
            st.builds(b["ZapSptes"], name=vm, gfn_range=gfn_range(target)),
            st.builds(b["ZapSptes"], name=vm, all=st.booleans()),
            st.builds(
                b["ZapSptes"],
                name=vm,
                slot=st.sampled_from([0, 1, 2, 9, 32767, 32768, (1 << 32) - 1]),
            ),
            st.builds(b["ZapSptes"], name=vm),
        ),
        "GetDirtyLog": st.builds(b["GetDirtyLog"], name=slot),
        "AgeSptes": st.one_of(
            st.builds(b["AgeSptes"], name=vm, gfn_range=gfn_range(target), test_only=st.booleans()),
            st.builds(b["AgeSptes"], name=vm, test_only=st.booleans()),
        ),
        "WatchEvents": st.builds(
            b["WatchEvents"],
            name=vm,
            from_sequence=maybe(u64()),
            names=st.lists(
                st.sampled_from(["kvm_mmu_set_spte", "mark_mmio_spte", "", "x"]), max_size=3
            ),
        ),
    }


def generic(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[dict[str, Any]]:
    """Random values for any subset of a message's fields, by descriptor."""
    parts: dict[str, st.SearchStrategy[Any]] = {}
    for fd in descriptor.fields:
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            if depth >= 2 or fd.message_type.full_name.startswith("google."):
                continue
            value: st.SearchStrategy[Any] = generic(fd.message_type, depth + 1)
        elif fd.type == FieldDescriptor.TYPE_STRING:
            value = st.one_of(st.sampled_from(JUNK_NAMES), st.text(max_size=8))
        elif fd.type == FieldDescriptor.TYPE_BOOL:
            value = st.booleans()
        elif fd.type == FieldDescriptor.TYPE_ENUM:
            value = enum(len(fd.enum_type.values))
        elif fd.type in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32):
            value = i32()
        elif fd.type in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
            value = st.one_of(st.integers(0, 64), st.sampled_from([(1 << 32) - 1, 1 << 31]))
        else:
            value = u64()
        parts[fd.name] = st.lists(value, max_size=4) if fd.is_repeated else value
    return st.fixed_dictionaries({}, optional=parts)


def _fill(msg: Message, values: dict[str, Any]) -> None:
    for key, value in values.items():
        fd = msg.DESCRIPTOR.fields_by_name[key]
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            items = value if fd.is_repeated else [value]
            for item in items:
                child = getattr(msg, key).add() if fd.is_repeated else getattr(msg, key)
                child.SetInParent()
                _fill(child, item)
        elif fd.is_repeated:
            getattr(msg, key).extend(value)
        else:
            setattr(msg, key, value)


def generic_message(method: str) -> st.SearchStrategy[Message]:
    cls = REQUEST_TYPES[method]

    def make(values: dict[str, Any]) -> Message:
        msg = cls()
        _fill(msg, values)
        return msg

    return generic(cls.DESCRIPTOR).map(make)


def no_follow(method: str, payload: bytes) -> bytes:
    """WatchEvents must not follow (it would block); other payloads pass unchanged."""
    if method != "WatchEvents":
        return payload
    try:
        request = events_pb2.WatchEventsRequest.FromString(payload)
    except DecodeError:
        return payload
    if not request.follow:
        return payload
    request.follow = False
    return request.SerializeToString()


def workload(target: Target) -> st.SearchStrategy[tuple[str, bytes]]:
    """Valid faults and batches on the set-up VMs, so that tables grow between zaps."""
    vm = st.sampled_from(target.vms)
    inside = st.builds(
        lambda slot, page: slot[1] + ((page << 12) % slot[2]),
        st.sampled_from(target.slots),
        st.integers(0, 1 << 20),
    )
    code = st.sampled_from([0, 1, 2, 3, 4, 6, 0x10, 0x14, 1 << 49 | 2, 1 << 49])
    fault = st.builds(
        lambda name, gpa, error: fault_pb2.FaultRequest(name=name, gpa=gpa, error_code=error),
        vm,
        inside,
        code,
    )
    batch = st.builds(
        lambda name, gpas, error: fault_pb2.BatchFaultRequest(
            name=name, gpas=gpas, shared_error_code=error
        ),
        vm,
        st.lists(inside, min_size=1, max_size=64),
        code,
    )
    return st.one_of(
        fault.map(lambda m: ("Fault", m.SerializeToString())),
        batch.map(lambda m: ("BatchFault", m.SerializeToString())),
    )


def requests(target: Target) -> st.SearchStrategy[tuple[str, bytes]]:
    """(method, request bytes) over every RPC: semantic, generic and garbage, and a
    third of valid faults (so the tables the fuzz zaps and moves have entries)."""
    aimed = semantic(target)
    assert set(aimed) == set(REQUEST_TYPES), set(REQUEST_TYPES) ^ set(aimed)
    methods = sorted(REQUEST_TYPES)

    def one(method: str) -> st.SearchStrategy[tuple[str, bytes]]:
        message = st.one_of(aimed[method], aimed[method], aimed[method], generic_message(method))
        as_bytes = message.map(lambda m: m.SerializeToString())
        garbage = st.binary(max_size=48)
        return st.one_of(as_bytes, as_bytes, as_bytes, garbage).map(
            lambda payload: (method, no_follow(method, payload))
        )

    anything = st.sampled_from(methods).flatmap(one)
    return st.one_of(anything, anything, workload(target))
