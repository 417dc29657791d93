"""Resource names (AIP-122): "vms/{vm}", "vms/{vm}/memslots/{slot}", "vms/{vm}/stats",
"hostProfiles/{profile}", "host". Parsing raises `FieldError` naming the field."""

from __future__ import annotations

import re
from typing import Final

from mmu.vm import MAX_MEMSLOT_ID
from server.errors import FieldError

VM_ID_RE: Final = re.compile(r"[a-z][a-z0-9-]{0,62}")
_VM_NAME: Final = re.compile(r"vms/([^/]+)")
_MEMSLOT_NAME: Final = re.compile(r"vms/([^/]+)/memslots/([^/]+)")
_STATS_NAME: Final = re.compile(r"vms/([^/]+)/stats")
_SLOT_ID: Final = re.compile(r"0|[1-9][0-9]{0,4}")

VM_TYPE: Final = "kvmmu.v1.Vm"
MEMSLOT_TYPE: Final = "kvmmu.v1.Memslot"
PROFILE_TYPE: Final = "kvmmu.v1.HostProfile"
HOST_NAME: Final = "host"


def check_vm_id(vm_id: str, field: str) -> str:
    if not VM_ID_RE.fullmatch(vm_id):
        raise FieldError(
            f"{vm_id!r} is not a VM id: 1-63 characters of [a-z0-9-] starting with a letter",
            field=field,
        )
    return vm_id


def vm_name(vm_id: str) -> str:
    return f"vms/{vm_id}"


def memslot_name(vm_id: str, slot: int) -> str:
    return f"vms/{vm_id}/memslots/{slot}"


def parse_vm_name(name: str, field: str = "name") -> str:
    match = _VM_NAME.fullmatch(name)
    if not match:
        raise FieldError(f"{name!r} is not a VM name of the form vms/{{vm}}", field=field)
    return check_vm_id(match.group(1), field)


def parse_stats_name(name: str, field: str = "name") -> str:
    match = _STATS_NAME.fullmatch(name)
    if not match:
        raise FieldError(f"{name!r} is not of the form vms/{{vm}}/stats", field=field)
    return check_vm_id(match.group(1), field)


def parse_memslot_name(name: str, field: str = "name") -> tuple[str, int]:
    match = _MEMSLOT_NAME.fullmatch(name)
    if not match:
        raise FieldError(
            f"{name!r} is not a memslot name of the form vms/{{vm}}/memslots/{{slot}}",
            field=field,
        )
    vm_id = check_vm_id(match.group(1), field)
    text = match.group(2)
    if not _SLOT_ID.fullmatch(text) or int(text) > MAX_MEMSLOT_ID:
        raise FieldError(f"memslot id {text!r} is not a decimal 0..{MAX_MEMSLOT_ID}", field=field)
    return vm_id, int(text)


def parse_profile_name(name: str, field: str) -> str:
    prefix = "hostProfiles/"
    if not name.startswith(prefix) or "/" in name[len(prefix) :] or len(name) == len(prefix):
        raise FieldError(f"{name!r} is not of the form hostProfiles/{{profile}}", field=field)
    return name[len(prefix) :]
