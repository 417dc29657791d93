"""DecodeSpte without a server: mmu.decode for a host profile, as a DecodeSpteResponse.

The CLI's `decode --profile` builds the same message the server would send,
so its human and `--json` output are those of the online path.
"""

from __future__ import annotations

from client._convert import from_proto
from client.results import SpteDecoding
from codec.decode import decode_to_proto
from mmu.decode import decode_spte
from mmu.profiles import host_from_profile
from mmu.vmtypes import VmType, VmView


def decode_offline(
    value: int,
    profile: str,
    *,
    mmio_value: int | None,
    vm_type: int,
    generation: int | None,
    level: int | None,
) -> SpteDecoding:
    """Decode `value` for a host profile and a VM of `vm_type` (KVM number) or `mmio_value`."""
    host = host_from_profile(profile)
    view = VmView.for_type(host, VmType(vm_type))
    if mmio_value is not None:
        view = VmView(host=host, shadow_mmio_value=mmio_value, vm_type=view.vm_type)
    decoded = decode_spte(view, value, level)
    return from_proto(SpteDecoding, decode_to_proto(host, decoded, generation))
