"""The two SPTE bit layouts, as data.

`v6` is mainline from v6.x until the 2026 EPT-MBEC rework (spec sections
1-11); `mbec` is the newest mainline with EPT mode-based execute control
(spec Appendix 12). Every difference between them is a field here, so the
encoders, decoders and predicates are written once and read the layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from mmu.bits import BIT, GENMASK


@dataclass(frozen=True, slots=True)
class SpteLayout:
    name: str

    # KVM's ACC_* numbering of pte_access (not PTE bits).
    acc_read: int  # 0 when the layout has no separate READ bit (v6)
    acc_write: int
    acc_user: int  # ACC_USER_MASK; on EPT in mbec also ACC_USER_EXEC_MASK
    acc_exec: int
    acc_all: int

    # A/D tracking type of TDP SPTEs.
    ad_shift: int
    ad_mask: int
    ad_disabled: int
    ad_wrprot_only: int

    # Access tracking saves these EPT permission bits, shifted.
    acc_track_saved_bits_mask: int
    acc_track_saved_bits_shift: int

    # What kvm_mmu_set_ept_masks() installs.
    ept_host_writable: int
    ept_mmu_writable: int
    ept_user_mask: int  # v6 reuses ACC_USER as "readable"
    ept_xu_mask: int  # user-mode execute, mbec only
    ept_acc_track_mask: int
    ept_present_r_without_exec_only: bool

    # MMIO SPTE generation placement.
    mmio_gen_low_mask: int
    mmio_gen_high_mask: int
    mmio_gen_high_shift: int
    mmio_gen_mask: int
    mmio_allowed_mask: int
    frozen_spte: int

    # Behaviour switches that are not a single mask.
    split_resets_exec_from_role: bool  # make_small_spte always re-derives X/XU
    rsvd_fold_xu_into_x: bool  # bad_mt_xwr lookup treats XU as X
    trace_always_user_letter: bool  # kvm_mmu_set_spte prints a 4th letter always
    trace_spte_requested_has_access: bool
    role_access_strings: tuple[str, ...]

    @property
    def acc_track_saved_mask_in_place(self) -> int:
        return self.acc_track_saved_bits_mask << self.acc_track_saved_bits_shift

    @property
    def mmio_gen_bits(self) -> int:
        return self.mmio_gen_mask.bit_length()


MMIO_SPTE_GEN_LOW_SHIFT: Final = 3

V6: Final = SpteLayout(
    name="v6",
    acc_read=0,
    acc_write=0x2,
    acc_user=0x4,
    acc_exec=0x1,
    acc_all=0x7,
    ad_shift=52,
    ad_mask=0x0030000000000000,
    ad_disabled=0x0010000000000000,
    ad_wrprot_only=0x0020000000000000,
    acc_track_saved_bits_mask=0x5,
    acc_track_saved_bits_shift=54,
    ept_host_writable=BIT(57),
    ept_mmu_writable=BIT(58),
    ept_user_mask=0x1,
    ept_xu_mask=0,
    ept_acc_track_mask=0x7,
    ept_present_r_without_exec_only=True,
    mmio_gen_low_mask=GENMASK(10, 3),
    mmio_gen_high_mask=GENMASK(62, 52),
    mmio_gen_high_shift=44,
    mmio_gen_mask=GENMASK(18, 0),
    mmio_allowed_mask=BIT(63) | GENMASK(51, 12) | GENMASK(2, 0),
    frozen_spte=0x80000000000005A0,
    split_resets_exec_from_role=False,
    rsvd_fold_xu_into_x=False,
    trace_always_user_letter=False,
    trace_spte_requested_has_access=False,
    role_access_strings=("---", "--x", "w--", "w-x", "-u-", "-ux", "wu-", "wux"),
)

MBEC: Final = SpteLayout(
    name="mbec",
    acc_read=0x1,
    acc_write=0x2,
    acc_user=0x4,
    acc_exec=0x8,
    acc_all=0xF,
    ad_shift=60,
    ad_mask=0x3000000000000000,
    ad_disabled=0x1000000000000000,
    ad_wrprot_only=0x2000000000000000,
    acc_track_saved_bits_mask=0x405,
    acc_track_saved_bits_shift=52,
    ept_host_writable=BIT(53),
    ept_mmu_writable=BIT(55),
    ept_user_mask=0,
    ept_xu_mask=0x400,
    ept_acc_track_mask=0x407,
    ept_present_r_without_exec_only=False,
    mmio_gen_low_mask=GENMASK(9, 3),
    mmio_gen_high_mask=GENMASK(62, 52),
    mmio_gen_high_shift=45,
    mmio_gen_mask=GENMASK(17, 0),
    mmio_allowed_mask=BIT(63) | GENMASK(51, 12) | BIT(10) | GENMASK(2, 0),
    frozen_spte=0x80000000000001A0,
    split_resets_exec_from_role=True,
    rsvd_fold_xu_into_x=True,
    trace_always_user_letter=True,
    trace_spte_requested_has_access=True,
    role_access_strings=(
        "----", "r---", "-w--", "rw--", "--u-", "r-u-", "-wu-", "rwu-",
        "---x", "r--x", "-w-x", "rw-x", "--ux", "r-ux", "-wux", "rwux",
    ),
)  # fmt: skip

LAYOUTS: Final = {V6.name: V6, MBEC.name: MBEC}
