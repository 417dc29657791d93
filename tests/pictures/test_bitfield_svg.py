"""The bit-field SVG: every bit covered exactly once, fields in order, same fields as decode."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.pictures.bitfield import bitfield_svg
from mmu.decode import decode_spte
from mmu.profiles import PROFILES, host_from_profile
from mmu.vmtypes import VmType, VmView

SVG = "{http://www.w3.org/2000/svg}"


def field_boxes(svg: str) -> list[tuple[int, int, str]]:
    root = ET.fromstring(svg)
    return [
        (int(g.attrib["data-msb"]), int(g.attrib["data-lsb"]), g.attrib["data-name"])
        for g in root.iter(f"{SVG}g")
        if g.attrib.get("class") == "field"
    ]


@settings(max_examples=80)
@given(
    profile=st.sampled_from(sorted(PROFILES)),
    value=st.integers(0, (1 << 64) - 1),
    level=st.sampled_from([None, 1, 2, 3]),
)
def test_every_bit_covered_once_in_order(profile: str, value: int, level: int | None) -> None:
    vm = VmView.for_type(host_from_profile(profile), VmType.DEFAULT)
    decoded = decode_spte(vm, value, level)
    boxes = field_boxes(bitfield_svg(decoded))
    expected_msb = 63
    for msb, lsb, _ in boxes:  # drawn left to right: bit 63 first
        assert msb == expected_msb and lsb <= msb
        expected_msb = lsb - 1
    assert expected_msb == -1
    assert [(f.msb, f.lsb, f.name) for f in reversed(decoded.fields)] == boxes


@pytest.mark.parametrize(
    ("profile", "vm_type", "value", "caption"),
    [
        (
            "intel-tdx",
            VmType.TDX,
            0xFEB00008,
            "MMIO SPTE for this VM: (spte & 0x8000000000000007) == 0x0",
        ),
        ("intel-ept", VmType.DEFAULT, 0x8600000123400B77, "present leaf SPTE at level 1"),
        ("amd-sev-snp", VmType.SEV, 0x0000800123400E67, "pfn 0x123400"),
    ],
)
def test_caption_is_the_decode_verdict(
    profile: str, vm_type: VmType, value: int, caption: str
) -> None:
    vm = VmView.for_type(host_from_profile(profile), vm_type)
    svg = bitfield_svg(decode_spte(vm, value, 1 if vm_type != VmType.TDX else None))
    root = ET.fromstring(svg)
    texts = [t.text or "" for t in root.iter(f"{SVG}text") if t.attrib.get("class") == "caption"]
    assert len(texts) == 1 and caption in texts[0]
