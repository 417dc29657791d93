"""kvmmu's model of the Linux KVM x86 MMU: pure, deterministic, no I/O.

Module map (mirrors arch/x86/kvm/mmu/):
    constants  layout-independent bits (PT_*, VMX_EPT_*, PFERR_*, RET_PF_*)
    layout     the two SPTE bit layouts (v6, mbec) as data
    host       host inputs -> every derived global mask (spte.c set-up)
    profiles   named host profiles
    mmio       MMIO SPTEs: encode, decode, generation (spte.h/spte.c, mmu.c)
    spte       present SPTEs: make_spte, predicates, access tracking
    rsvd       reserved-bit tables of the TDP MMU
    decode     decode_spte: a named breakdown of any 64-bit value
    trace      kvmmmu tracepoint text
    batch      numpy-vectorised versions of the hot SPTE functions
"""
