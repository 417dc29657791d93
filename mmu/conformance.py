"""Run golden vector files through the model's public functions.

    python -m mmu.conformance FILE...

Prints one line per failing case (function, inputs, expected, got) and
finally exactly `N passed, M failed`; exits 0 only if M == 0 and N > 0.
Every case is also a derivation test: the model's host and VM state must
equal `config.derived` before the function itself is checked.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmu import mmio, spte, trace
from mmu.constants import RET_PF_EMULATE, RET_PF_NAMES
from mmu.host import Host, kvm_mmu_set_me_spte_mask
from mmu.permissions import tdp_root_permissions
from mmu.vectors import Case, diff, hexint, host_from_case, load_cases, vm_type_of
from mmu.vmtypes import (
    VmView,
    tdp_has_smep,
    tdp_root_access,
    tdp_root_level,
    unsupported_reason,
)

Handler = Callable[[Case, Host, VmView], dict[str, Any]]


def vm_derived(host: Host, vm: VmView, config: dict[str, Any]) -> dict[str, Any]:
    vm_type = vm.vm_type
    return {
        "vm_mmio_value": vm.shadow_mmio_value,
        "tdp_root_level": tdp_root_level(host, int(config["guest_maxphyaddr"])),
        "nr_memslot_as_ids": vm_type.nr_memslot_as_ids,
        "vm_type_supported": unsupported_reason(host, vm_type) is None,
        "tdp_has_smep": tdp_has_smep(host, vm_type),
        "tdp_root_access": tdp_root_access(host, vm_type),
    }


def check_derived(case: Case, host: Host, vm: VmView) -> list[str]:
    got = host.derived_dict() | vm_derived(host, vm, case.config)
    return diff(case.config.get("derived", {}), got, "derived.")


def predicate_block(host: Host, vm: VmView, value: int, level: int) -> dict[str, Any]:
    layout = host.layout
    present = spte.is_shadow_present_pte(value)
    return {
        "is_shadow_present_pte": present,
        "is_mmio_spte": mmio.is_mmio_spte(vm, value),
        "is_frozen_spte": spte.is_frozen_spte(layout, value),
        "is_large_pte": spte.is_large_pte(value),
        "is_last_spte": spte.is_last_spte(value, level),
        "spte_to_pfn": spte.spte_to_pfn(host, value),
        "is_writable_pte": spte.is_writable_pte(value),
        "is_mmu_writable_spte": spte.is_mmu_writable_spte(host, value),
        "is_accessed_spte": spte.is_accessed_spte(host, value),
        "is_executable_pte": spte.is_executable_pte(host, value),
        "spte_ad_enabled": spte.spte_ad_enabled(layout, value) if present else None,
        "spte_ad_need_write_protect": (
            spte.spte_ad_need_write_protect(layout, value) if present else None
        ),
        "is_access_track_spte": spte.is_access_track_spte(host, value) if present else None,
        "is_rsvd_spte": spte.is_rsvd_spte(host, value, level),
    }


def fn_derive_host_config(case: Case, host: Host, vm: VmView) -> dict[str, Any]:
    return {"ok": True}


def fn_tdp_rsvd_bits_masks(case: Case, host: Host, vm: VmView) -> dict[str, Any]:
    if host.rsvd is None:
        return {"bad_mt_xwr": None, "rsvd_bits_mask": None}
    return {
        "bad_mt_xwr": host.rsvd.bad_mt_xwr,
        "rsvd_bits_mask": [list(m) for m in host.rsvd.masks],
    }


def fn_tdp_root_role(case: Case, host: Host, vm: VmView) -> dict[str, Any]:
    access = tdp_root_access(host, vm.vm_type)
    smep = tdp_has_smep(host, vm.vm_type)
    assert access is not None and smep is not None
    return {
        "level": tdp_root_level(host, int(case.config["guest_maxphyaddr"])),
        "direct": True,
        "ad_disabled": not host.kvm_ad_enabled,
        "cr0_wp": True,
        "efer_nx": True,
        "cr4_smep": smep,
        "access": access,
        "access_str": host.layout.role_access_strings[access],
        "permissions": tdp_root_permissions(host, cr4_smep=smep),
    }


def fn_set_mmio_spte_mask(case: Case, host: Host, vm: VmView) -> dict[str, Any]:
    i = case.inputs
    _, result = host.with_mmio_mask(
        hexint(i["mmio_value"]), hexint(i["mmio_mask"]), hexint(i["access_mask"])
    )
    return {
        "shadow_mmio_value": result.shadow_mmio_value,
        "shadow_mmio_mask": result.shadow_mmio_mask,
        "shadow_mmio_access_mask": result.shadow_mmio_access_mask,
        "enable_mmio_caching": result.enable_mmio_caching,
        "warnings": list(result.warnings),
    }


def fn_set_me_spte_mask(case: Case, host: Host, vm: VmView) -> dict[str, Any]:
    value, mask, warnings = kvm_mmu_set_me_spte_mask(
        hexint(case.inputs["me_value"]), hexint(case.inputs["me_mask"])
    )
    return {"shadow_me_value": value, "shadow_me_mask": mask, "warnings": list(warnings)}


def mmio_decoders(host: Host, vm: VmView, value: int) -> dict[str, Any]:
    return {
        "is_mmio_spte": mmio.is_mmio_spte(vm, value),
        "is_shadow_present_pte": spte.is_shadow_present_pte(value),
        "mmio_gfn": mmio.get_mmio_spte_gfn(host, value),
        "mmio_access": mmio.get_mmio_spte_access(host, value),
        "mmio_generation": mmio.get_mmio_spte_generation(host.layout, value),
    }


def fn_make_mmio_spte(case: Case, host: Host, vm: VmView) -> dict[str, Any]:
    i = case.inputs
    generation = hexint(i["memslots_generation"])
    value = mmio.make_mmio_spte(vm, hexint(i["gfn"]), int(i["access"]), generation)
    check = mmio.check_mmio_spte(host.layout, value, generation)
    return {"spte": value, "generation_matches": check.valid, "warnings": []} | mmio_decoders(
        host, vm, value
    )


def fn_mmio_spte_decode(case: Case, host: Host, vm: VmView) -> dict[str, Any]:
    value = hexint(case.inputs["spte"])
    return mmio_decoders(host, vm, value) | {
        "is_frozen_spte": spte.is_frozen_spte(host.layout, value)
    }


def fn_check_mmio_spte(case: Case, host: Host, vm: VmView) -> dict[str, Any]:
    value = hexint(case.inputs["spte"])
    check = mmio.check_mmio_spte(host.layout, value, hexint(case.inputs["memslots_generation"]))
    text = trace.check_mmio_spte(value, check.kvm_gen, check.spte_gen) if check.traced else None
    return {
        "valid": check.valid,
        "kvm_gen": check.kvm_gen,
        "spte_gen": check.spte_gen,
        "trace_check_mmio_spte": text,
    }


def fn_handle_mmio_page_fault(case: Case, host: Host, vm: VmView) -> dict[str, Any]:
    i = case.inputs
    leaf = mmio.handle_mmio_spte(vm, hexint(i["leaf_spte"]), hexint(i["memslots_generation"]))
    text = None
    if leaf.result == RET_PF_EMULATE and leaf.gfn is not None and leaf.access is not None:
        text = trace.handle_mmio_page_fault(0, leaf.gfn, leaf.access)
    return {
        "result": RET_PF_NAMES[leaf.result],
        "mmio_gfn": leaf.gfn,
        "mmio_access": leaf.access,
        "trace_handle_mmio_page_fault": text,
    }


def fn_invalidate_mmio_sptes(case: Case, host: Host, vm: VmView) -> dict[str, Any]:
    gen = hexint(case.inputs["new_generation"])
    return {"zap_all": mmio.mmio_gen_wrap_zaps(host, vm.vm_type.nr_memslot_as_ids, gen)}


def fn_generation_mmio_spte_mask(case: Case, host: Host, vm: VmView) -> dict[str, Any]:
    warnings: list[str] = []
    mask = mmio.generation_mmio_spte_mask(host.layout, hexint(case.inputs["generation"]), warnings)
    return {
        "mask": mask,
        "roundtrip_generation": mmio.get_mmio_spte_generation(host.layout, mask),
        "warnings": warnings,
    }


def fn_trace_mark_mmio_spte(case: Case, host: Host, vm: VmView) -> dict[str, Any]:
    gfn, value = hexint(case.inputs["gfn"]), hexint(case.inputs["spte"])
    access, gen = trace.mark_mmio_spte_fields(host, value)
    return {
        "access": access,
        "gen": gen,
        "text_after_sptep": trace.mark_mmio_spte(host, gfn, value),
    }


def fn_make_spte(case: Case, host: Host, vm: VmView) -> dict[str, Any]:
    i = case.inputs
    warnings: list[str] = []
    level = int(i["level"])
    value, wrprot = spte.make_spte(
        host,
        level=level,
        pte_access=int(i["pte_access"]),
        pfn=hexint(i["pfn"]),
        old_spte=hexint(i["old_spte"]),
        prefetch=bool(i["prefetch"]),
        synchronizing=bool(i["synchronizing"]),
        host_writable=bool(i["host_writable"]),
        ad_disabled=bool(i["sp_ad_disabled"]),
        ad_need_write_protect=bool(i["sp_ad_need_write_protect"]),
        mt_bits=hexint(i["mt_bits"]),
        host_mmio_pfn=bool(i["host_mmio_pfn"]),
        unsync_denied=bool(i["unsync_denied"]),
        warnings=warnings,
    )
    # The generator picks the traced SPTE address freely; it is passed through.
    sptep = hexint(case.expected.get("trace_sptep_pa", "0x0"))
    return {
        "spte": value,
        "wrprot": wrprot,
        "warnings": warnings,
        "trace_sptep_pa": sptep,
        "trace_kvm_mmu_set_spte": trace.kvm_mmu_set_spte(
            host, hexint(i["gfn"]), value, level, sptep
        ),
    } | predicate_block(host, vm, value, level)


def fn_make_nonleaf_spte(case: Case, host: Host, vm: VmView) -> dict[str, Any]:
    i = case.inputs
    value = spte.make_nonleaf_spte(host, hexint(i["child_pt_pa"]), bool(i["ad_disabled"]))
    return {"spte": value} | predicate_block(host, vm, value, int(i["level"]))


def fn_mark_spte_for_access_track(case: Case, host: Host, vm: VmView) -> dict[str, Any]:
    warnings: list[str] = []
    value = spte.mark_spte_for_access_track(host, hexint(case.inputs["spte"]), warnings)
    return {
        "spte": value,
        "is_access_track_spte": spte.is_access_track_spte(host, value),
        "restored": spte.restore_acc_track_spte(host, value),
        "warnings": warnings,
    }


def fn_restore_acc_track_spte(case: Case, host: Host, vm: VmView) -> dict[str, Any]:
    return {"spte": spte.restore_acc_track_spte(host, hexint(case.inputs["spte"]))}


def fn_spte_predicates(case: Case, host: Host, vm: VmView) -> dict[str, Any]:
    value, level = hexint(case.inputs["spte"]), int(case.inputs["level"])
    extra: dict[str, Any] = {"rsvd_bits": None, "bad_mt_xwr": None}
    if host.rsvd is not None:
        extra = {
            "rsvd_bits": host.rsvd.mask_for(value, level),
            "bad_mt_xwr": host.rsvd.is_bad_mt_xwr(value),
        }
    return predicate_block(host, vm, value, level) | extra


def fn_make_small_spte(case: Case, host: Host, vm: VmView) -> dict[str, Any]:
    i = case.inputs
    warnings: list[str] = []
    value = spte.make_small_spte(
        host,
        hexint(i["huge_spte"]),
        int(i["child_level"]),
        int(i["child_access"]),
        int(i["index"]),
        warnings,
    )
    return {"spte": value, "warnings": warnings}


def fn_make_huge_spte(case: Case, host: Host, vm: VmView) -> dict[str, Any]:
    warnings: list[str] = []
    value = spte.make_huge_spte(
        host, hexint(case.inputs["small_spte"]), int(case.inputs["level"]), warnings
    )
    return {"spte": value, "warnings": warnings}


def fn_spte_index(case: Case, host: Host, vm: VmView) -> dict[str, Any]:
    gpa = hexint(case.inputs["gpa"])
    return {"index_by_level": [spte.spte_index(gpa, level) for level in range(1, 6)]}


def fn_trace_spte_changed(case: Case, host: Host, vm: VmView) -> dict[str, Any]:
    i = case.inputs
    old, new = hexint(i["old_spte"]), hexint(i["new_spte"])
    text = trace.kvm_tdp_mmu_spte_changed(
        int(i["as_id"]), hexint(i["gfn"]), int(i["level"]), old, new
    )
    return {"emitted": old != new, "text": text}


def fn_trace_spte_requested(case: Case, host: Host, vm: VmView) -> dict[str, Any]:
    i = case.inputs
    gfn, pfn, goal = hexint(i["gfn"]), hexint(i["fault_pfn"]), int(i["goal_level"])
    access = i.get("access")
    return {
        "pfn_field": trace.spte_requested_pfn(gfn, pfn, goal),
        "text": trace.kvm_mmu_spte_requested(
            host, gfn, pfn, goal, None if access is None else int(access)
        ),
    }


def fn_tdp_scenario(case: Case, host: Host, vm: VmView) -> dict[str, Any]:
    from mmu.scenario_vectors import run_tdp_scenario  # noqa: PLC0415 - the TDP MMU is big

    return run_tdp_scenario(case)


HANDLERS: dict[str, Handler] = {
    "derive_host_config": fn_derive_host_config,
    "tdp_rsvd_bits_masks": fn_tdp_rsvd_bits_masks,
    "tdp_root_role": fn_tdp_root_role,
    "kvm_mmu_set_mmio_spte_mask": fn_set_mmio_spte_mask,
    "kvm_mmu_set_me_spte_mask": fn_set_me_spte_mask,
    "make_mmio_spte": fn_make_mmio_spte,
    "mmio_spte_decode": fn_mmio_spte_decode,
    "check_mmio_spte": fn_check_mmio_spte,
    "handle_mmio_page_fault": fn_handle_mmio_page_fault,
    "kvm_mmu_invalidate_mmio_sptes": fn_invalidate_mmio_sptes,
    "generation_mmio_spte_mask": fn_generation_mmio_spte_mask,
    "trace_mark_mmio_spte": fn_trace_mark_mmio_spte,
    "make_spte": fn_make_spte,
    "make_nonleaf_spte": fn_make_nonleaf_spte,
    "mark_spte_for_access_track": fn_mark_spte_for_access_track,
    "restore_acc_track_spte": fn_restore_acc_track_spte,
    "spte_predicates": fn_spte_predicates,
    "make_small_spte": fn_make_small_spte,
    "make_huge_spte": fn_make_huge_spte,
    "spte_index": fn_spte_index,
    "trace_kvm_tdp_mmu_spte_changed": fn_trace_spte_changed,
    "trace_kvm_mmu_spte_requested": fn_trace_spte_requested,
    "tdp_scenario": fn_tdp_scenario,
}


def run_case(case: Case, host_cache: dict[str, Host] | None = None) -> list[str]:
    """Differences for one case (empty list = pass)."""
    handler = HANDLERS.get(case.fn)
    if handler is None:
        return [f"unknown fn {case.fn!r}"]
    try:
        key = json.dumps({k: v for k, v in case.config.items() if k != "derived"}, sort_keys=True)
        host = host_cache.get(key) if host_cache is not None else None
        if host is None:
            host = host_from_case(case.config)
            if host_cache is not None:
                host_cache[key] = host
        vm = VmView.for_type(host, vm_type_of(case.config))
        problems = check_derived(case, host, vm)
        got = handler(case, host, vm)
    except Exception as exc:
        return [f"raised {type(exc).__name__}: {exc}"]
    return problems + diff(case.expected, got)


def _short(value: Any, limit: int = 600) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[:limit] + "..."


def run_files(paths: list[Path], out: Any = sys.stdout) -> tuple[int, int]:
    passed = failed = 0
    host_cache: dict[str, Host] = {}
    for path in paths:
        for case in load_cases(path):
            problems = run_case(case, host_cache)
            if not problems:
                passed += 1
                continue
            failed += 1
            print(
                f"FAIL {case.source}:{case.id} fn={case.fn} inputs={_short(case.inputs)} "
                f"expected={_short(case.expected)} got: {'; '.join(problems[:8])}",
                file=out,
            )
    return passed, failed


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or any(a in ("-h", "--help") for a in args):
        print(__doc__.strip())
        return 0 if args else 2
    paths = [Path(a) for a in args]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        print(f"no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    passed, failed = run_files(paths)
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
