"""Every kvmmu command against a real server, in human and --json form, with exit statuses."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.cli.conftest import REPO, Cli
from tests.server.conftest import unique_id


def lines(text: str) -> list[str]:
    return text.splitlines()


def test_host(kvmmu: Cli) -> None:
    out = lines(kvmmu.ok("host"))
    assert out[:2] == ["profile     intel-ept", "overridden  -"]
    assert "Module inputs (HostConfig)" in out
    assert "shadow_mmio_value                         0x6" in out
    assert "shadow_mmio_mask                          0x8000000000000007" in out
    assert any(line.startswith("tdx           no       TDX is not available") for line in out)
    data = json.loads(kvmmu.ok("--json", "host"))
    assert data["name"] == "host"
    assert data["config"]["mmu"] == "MMU_KIND_EPT"
    assert data["globals"]["shadow_mmio_value"] == "6"


def test_host_profiles(kvmmu: Cli) -> None:
    out = lines(kvmmu.ok("host", "profiles"))
    assert out[0].split() == [
        "PROFILE",
        "VENDOR",
        "MMU",
        "LAYOUT",
        "MAXPHYADDR",
        "TDP",
        "LEVELS",
        "VM",
        "TYPES",
    ]
    assert (
        "intel-tdx       intel   ept  v6              52           5  default,sw-protected,tdx"
        in out
    )
    data = json.loads(kvmmu.ok("--json", "host", "profiles"))
    names = [p["name"] for p in data["host_profiles"]]
    assert "hostProfiles/amd-sev-snp" in names and data["next_page_token"] == ""
    one = lines(kvmmu.ok("host", "profiles", "amd-sev-snp"))
    assert one[0] == "profile      amd-sev-snp"
    assert kvmmu.fails(2, "host", "profiles", "nope").startswith("kvmmu host profiles: ")


def test_vm_lifecycle(kvmmu: Cli) -> None:
    vm = unique_id("life")
    created = lines(kvmmu.ok("vm", "create", "--id", vm, "--name", "my vm"))
    assert created[:6] == [
        f"name                 vms/{vm}",
        f"vm_id                {vm}",
        "display_name         my vm",
        "vm_type              default",
        "mmio_value           0x6",
        "guest_maxphyaddr     46",
    ]
    listed = lines(kvmmu.ok("vm", "list"))
    assert listed[0].split() == [
        "VM",
        "TYPE",
        "MMIO",
        "VALUE",
        "ROOT",
        "LEVEL",
        "GENERATION",
        "TRACING",
        "NAME",
    ]
    assert any(line.split()[:6] == [vm, "default", "0x6", "4", "0", "off"] for line in listed)
    ids = [v["vm_id"] for v in json.loads(kvmmu.ok("--json", "vm", "list"))["vms"]]
    assert vm in ids
    got = json.loads(kvmmu.ok("--json", "vm", "get", f"vms/{vm}", "--stats"))
    assert got["vm_type"] == "VM_TYPE_DEFAULT" and got["mmio_value"] == "6"
    assert got["stats"]["pf_taken"] == "0"
    assert kvmmu.ok("vm", "tracing", vm, "on") == f"vms/{vm}: tracing on\n"
    updated = json.loads(kvmmu.ok("--json", "vm", "update", vm, "--name", "renamed"))
    assert updated["display_name"] == "renamed" and updated["tracing_enabled"] is True
    assert kvmmu.ok("vm", "delete", vm) == f"deleted vms/{vm}\n"
    assert kvmmu.fails(1, "vm", "get", vm) == f"kvmmu: not found: name: vms/{vm} does not exist"


def test_vm_create_json_and_refusals(kvmmu: Cli) -> None:
    vm = unique_id("js")
    data = json.loads(kvmmu.ok("--json", "vm", "create", "--id", vm, "--type", "sw-protected"))
    assert data["name"] == f"vms/{vm}" and data["vm_type"] == "VM_TYPE_SW_PROTECTED"
    assert kvmmu.ok("--json", "vm", "delete", vm).strip() == "{}"
    line = kvmmu.fails(1, "vm", "create", "--type", "tdx")
    assert line.startswith("kvmmu: failed precondition: vm.vm_type: TDX is not available")
    assert line.endswith("(--type)")
    bad_id = kvmmu.fails(1, "vm", "create", "--id", "Bad_Id")
    assert bad_id.startswith("kvmmu: invalid argument: vm_id: ") and bad_id.endswith("(--id)")


def test_set_mmio_value(kvmmu: Cli, vm: str) -> None:
    kvmmu.ok("fault", vm, "0x1000")
    refused = kvmmu.fails(1, "vm", "set-mmio-value", vm, "0x3")
    assert refused.startswith("kvmmu: failed precondition: value: ")
    out = lines(kvmmu.ok("vm", "set-mmio-value", vm, "0x3", "--zap"))
    assert out[:2] == [f"vm            vms/{vm}", "mmio_value    0x3"]
    data = json.loads(kvmmu.ok("--json", "vm", "set-mmio-value", vm, "6"))
    assert data["vm"]["mmio_value"] == "6" and data["spte_changes"] == "0"


def test_memslots(kvmmu: Cli, vm: str) -> None:
    out = lines(
        kvmmu.ok("memslot", "set", vm, "--slot", "1", "--gpa", "4G", "--size", "2M", "--dirty-log")
    )
    assert out[1].split() == [
        "1",
        "0x100000000",
        "0x100200000",
        "2M",
        "0x100000",
        "512",
        "4K",
        "0x0",
        "dirty-log",
    ]
    assert "change         create" in out
    listed = lines(kvmmu.ok("memslot", "list", vm))
    assert listed[0].split()[:3] == ["SLOT", "GPA", "START"]
    assert [line.split()[0] for line in listed[1:]] == ["0", "1"]
    data = json.loads(kvmmu.ok("--json", "memslot", "list", vm))
    assert [m["slot"] for m in data["memslots"]] == [0, 1]
    assert data["memslots"][1]["guest_phys_addr"] == str(4 << 30)
    one = json.loads(kvmmu.ok("--json", "memslot", "get", vm, "--slot", "1"))
    assert one["log_dirty_pages"] is True and one["npages"] == "512"
    overlap = kvmmu.fails(1, "memslot", "set", vm, "--slot", "2", "--gpa", "4G", "--size", "4K")
    assert overlap.startswith("kvmmu: already exists: memslot.guest_phys_addr: ")
    unaligned = kvmmu.fails(
        1, "memslot", "set", vm, "--slot", "2", "--gpa", "0x1001", "--size", "4K"
    )
    assert unaligned == (
        "kvmmu: invalid argument: memslot.guest_phys_addr: must be a multiple of 4096 (--gpa)"
    )
    deleted = json.loads(kvmmu.ok("--json", "memslot", "delete", vm, "--slot", "1"))
    assert deleted["outcome"]["change"] == "MEMSLOT_CHANGE_DELETE"
    assert "change         delete" in kvmmu.ok("memslot", "delete", vm, "--slot", "0")


def test_fault_human_and_json(kvmmu: Cli, vm: str) -> None:
    out = lines(kvmmu.ok("fault", vm, "0x1000", "--write", "--user", "--explain"))
    assert out[:5] == [
        "outcome         FIXED",
        "gfn             0x1",
        "private         no",
        "level           1 (4K)",
        "spte            0x8600000000001b77",
    ]
    assert "events:" in out and "explanation:" in out
    assert any(line.startswith("  kvm_mmu_set_spte: gfn 1 spte 8600000000001b77") for line in out)
    data = json.loads(kvmmu.ok("--json", "fault", vm, "4K", "--write", "--user"))
    assert data["outcome"] == "FAULT_OUTCOME_SPURIOUS" and data["gfn"] == "1"
    mmio = json.loads(kvmmu.ok("--json", "fault", vm, "0xfee00000"))
    assert mmio["outcome"] == "FAULT_OUTCOME_EMULATE" and mmio["spte"] == str(0xFEE00016)
    hit = json.loads(kvmmu.ok("--json", "fault", vm, "0xfee00000", "--rsvd", "--present"))
    assert hit["mmio_check"] == "FAULT_OUTCOME_EMULATE"
    raw = json.loads(kvmmu.ok("--json", "fault", vm, "0x2000", "--error-code", "0x2"))
    assert raw["outcome"] == "FAULT_OUTCOME_FIXED"
    beyond = kvmmu.fails(1, "fault", vm, "0x8000000feb00000")
    assert beyond.startswith("kvmmu: invalid argument: gpa: ")


def test_fault_batch_file(kvmmu: Cli, vm: str, tmp_path: object) -> None:
    text = "# gpa  error code\n0x1000\n0x2000 0x2  # a write\n\n8K 0x6\n0xfee01000\n"
    out = lines(kvmmu.ok("fault", vm, "--from-file", "-", "--write", stdin=text))
    assert out == [
        "GPA         GFN      OUTCOME   LEVEL  SPTE",
        "0x1000      0x1      FIXED         1  0x8600000000001b77",
        "0x2000      0x2      FIXED         1  0x8600000000002b77",
        "0x2000      0x2      SPURIOUS      1  0x8600000000002b77",
        "0xfee01000  0xfee01  EMULATE       1  0xfee01016",
        "4 faults: EMULATE 1, FIXED 2, SPURIOUS 1",
    ]
    data = [
        json.loads(x)
        for x in lines(
            kvmmu.ok("--json", "fault", vm, "--from-file", "-", "--batch-size", "2", stdin=text)
        )
    ]
    assert len(data) == 2  # one BatchFault message per batch, one per line
    assert data[0]["gfns"] == ["1", "2"]
    summary = kvmmu.ok("fault", vm, "--from-file", "-", "--summary", stdin=text)
    assert summary == "4 faults: EMULATE 1, SPURIOUS 3\n"
    bad = kvmmu.fails(2, "fault", vm, "--from-file", "-", stdin="0x1000\n0x2000 0x2 junk\n")
    assert "line 2: expected 'GPA [ERROR_CODE]'" in bad
    bad = kvmmu.fails(2, "fault", vm, "--from-file", "-", stdin="0xzz\n")
    assert "line 1: '0xzz' is not a number or size" in bad


def test_sptes_table_tree_and_json(kvmmu: Cli, vm: str) -> None:
    kvmmu.ok("fault", vm, "0x1000", "--write")
    kvmmu.ok("fault", vm, "0xfee00000")
    out = lines(kvmmu.ok("sptes", vm))
    assert out == [
        "ROOT    GFN      LEVEL  SPTE                KIND  PFN  ACCESS  A/D  MMIO GEN",
        "direct  0x1          1  0x8600000000001b77  leaf  0x1  rwxu    AD",
        "direct  0xfee00      1  0x00000000fee00016  mmio                         0x2",
    ]
    ranged = lines(kvmmu.ok("sptes", vm, "--start", "0", "--end", "2M"))
    assert len(ranged) == 2 and ranged[1].split()[1] == "0x1"
    tables = lines(kvmmu.ok("sptes", vm, "--all", "--level", "4"))
    assert tables[1].split()[:5] == ["direct", "0x0", "4", "0x8000007000001907", "non-leaf"]
    present = lines(kvmmu.ok("sptes", vm, "--present-only"))
    assert [line.split() for line in present[1:]] == [out[1].split()]
    tree = kvmmu.ok("sptes", vm, "--tree")
    assert "direct root (level 4 table)" in tree
    assert "L1 gfn 0x1 0x8600000000001b77 leaf pfn 0x1 rwxu AD" in tree
    assert "L1 gfn 0xfee00 0x00000000fee00016 mmio gen 0x2" in tree
    chunk = json.loads(kvmmu.ok("--json", "sptes", vm))
    assert chunk == {
        "gfns": ["1", str(0xFEE00)],
        "levels": [1, 1],
        "values": [str(0x8600000000001B77), str(0xFEE00016)],
        "roots": ["TDP_ROOT_DIRECT", "TDP_ROOT_DIRECT"],
    }
    assert kvmmu.fails(1, "sptes", "no-such-vm").startswith("kvmmu: not found: ")
    gpas = "\n".join(hex(gpa) for gpa in range(0x2000, 0x14000, 0x1000))
    kvmmu.ok("fault", vm, "--from-file", "-", "--write", stdin=gpas)
    crowded = kvmmu.ok("sptes", vm, "--tree")  # 19 leaves in the first level-1 table
    assert "L1 gfn 0x8 0x8600000000008b77" in crowded  # the eighth leaf is drawn
    assert "L1 gfn 0x9 0x" not in crowded
    assert "... 11 more entries in this table (see the table view)" in crowded
    assert "--level filters entries" in kvmmu.fails(2, "sptes", vm, "--tree", "--level", "1")


def test_decode_for_a_vm_and_the_server_host(kvmmu: Cli, vm: str) -> None:
    out = lines(kvmmu.ok("decode", "0x8600000000001b77", "--vm", vm, "--level", "1"))
    assert out[0] == "0x8600000000001b77 leaf level 1 pfn 0x1 (rwxu)"
    data = json.loads(kvmmu.ok("--json", "decode", "0xfee00016", "--vm", vm))
    assert data["kind"] == "SPTE_KIND_MMIO" and data["mmio"]["generation_valid"] is True
    host = json.loads(kvmmu.ok("--json", "decode", "0xfee00016"))
    assert host["kind"] == "SPTE_KIND_MMIO"
    offline = json.loads(kvmmu.ok("--json", "decode", "0xfee00016", "--profile", "intel-ept"))
    assert offline == host  # the offline decoder gives the server's answer


def test_zap_age_dirty_log_stats(kvmmu: Cli, vm: str) -> None:
    kvmmu.ok("memslot", "set", vm, "--slot", "1", "--gpa", "4G", "--size", "1M", "--dirty-log")
    for gpa in ("0x1000", "0x2000", "0x100003000"):
        kvmmu.ok("fault", vm, gpa, "--write")
    young = lines(kvmmu.ok("age", vm, "--start", "0", "--end", "1G", "--test"))
    assert young == ["young         yes", "spte_changes  0"]
    aged = json.loads(kvmmu.ok("--json", "age", vm, "--start", "0", "--end", "1G"))
    assert aged == {"young": True, "spte_changes": "2"}
    log = lines(kvmmu.ok("dirty-log", vm, "--slot", "1"))
    assert log[:3] == ["base_gfn      0x100000", "npages        256", "dirty_count   1"]
    assert log[-2:] == ["DIRTY GFN  GPA", "0x100003   0x100003000"]
    again = json.loads(kvmmu.ok("--json", "dirty-log", vm, "--slot", "1"))
    assert again["dirty_count"] == "0" and again["dirty_page_offsets"] == []
    assert kvmmu.fails(1, "dirty-log", vm, "--slot", "0").startswith("kvmmu: failed precondition: ")
    stats = lines(kvmmu.ok("stats", vm))
    assert stats[:3] == [
        "pf_taken              3",
        "pf_fixed              3",
        "pf_emulate            0",
    ]
    assert json.loads(kvmmu.ok("--json", "stats", vm))["pages_4k"] == "3"
    assert kvmmu.ok("zap", vm, "--range", "0", "12K") == "spte_changes  2\n"
    assert json.loads(kvmmu.ok("--json", "zap", vm, "--slot", "1")) == {"spte_changes": "1"}
    assert kvmmu.ok("zap", vm, "--all").startswith("spte_changes  ")
    backwards = kvmmu.fails(2, "zap", vm, "--range", "8K", "4K")
    assert "Invalid value for --range: end 0x1000 must be above start 0x2000" in backwards
    assert kvmmu.fails(1, "zap", vm, "--slot", "7").startswith("kvmmu: not found: ")


def test_events_formats(kvmmu: Cli, vm: str) -> None:
    kvmmu.ok("fault", vm, "0x1000", "--write")
    text = lines(kvmmu.ok("events", vm, "--name", "kvm_mmu_set_spte"))
    assert len(text) == 1
    seq, rest = text[0].split(maxsplit=1)
    assert rest == "kvm_mmu_set_spte: gfn 1 spte 8600000000001b77 (rwxu) level 1 at 7000003008"
    ftrace = kvmmu.ok(
        "events", vm, "--from", seq, "--format", "ftrace", "--name", "kvm_mmu_set_spte"
    )
    assert ftrace.endswith(
        ": kvm_mmu_set_spte: gfn 1 spte 8600000000001b77 (rwxu) level 1 at 7000003008\n"
    )
    assert ftrace.startswith("           kvmmu-0     [000] .....  ")
    events = [json.loads(x) for x in lines(kvmmu.ok("events", vm, "--format", "json"))]
    assert [e["sequence"] for e in events] == [str(i) for i in range(1, len(events) + 1)]
    assert events[-1]["kvm_mmu_set_spte"]["spte"] == str(0x8600000000001B77)
    batches = [json.loads(x) for x in lines(kvmmu.ok("--json", "events", vm))]
    assert sum(len(b["events"]) for b in batches) == len(events)
    assert all(b["lost_events"] == "0" for b in batches)


def test_attributes_on_a_private_memory_vm(kvmmu: Cli) -> None:
    vm = unique_id("sw")
    kvmmu.ok("vm", "create", "--id", vm, "--type", "sw-protected")
    kvmmu.ok(
        "memslot",
        "set",
        vm,
        "--slot",
        "0",
        "--gpa",
        "0",
        "--size",
        "16M",
        "--guest-memfd",
        "--gmem-pfn-base",
        "0x100000",
    )
    assert kvmmu.ok("attributes", vm, "--start", "0", "--end", "2M", "--private") == (
        "result        applied\nspte_changes  0\n"
    )
    again = json.loads(
        kvmmu.ok("--json", "attributes", vm, "--start", "0", "--end", "2M", "--private")
    )
    assert again == {"result": "MEMORY_ATTRIBUTES_RESULT_NOOP", "spte_changes": "0"}
    fault = json.loads(kvmmu.ok("--json", "fault", vm, "0x1000", "--private", "--write"))
    assert fault["outcome"] == "FAULT_OUTCOME_FIXED" and fault["private"] is True
    bad = kvmmu.fails(1, "attributes", vm, "--start", "0x1000", "--end", "0x1800", "--shared")
    assert (
        bad
        == "kvmmu: invalid argument: gpa_range.size: must be a non-zero multiple of 4096 (--end)"
    )


def test_tdx_quick_start(kvmmu_tdx: Cli) -> None:
    vm = unique_id("td")
    created = json.loads(kvmmu_tdx.ok("--json", "vm", "create", "--type", "tdx", "--id", vm))
    assert created["mmio_value"] == "0" and created["gfn_direct_bits"] == str(1 << 39)
    fault = lines(kvmmu_tdx.ok("fault", vm, "0x80000feb00000", "--write"))
    assert fault[:2] == ["outcome         EMULATE", "gfn             0xfeb00"]
    table = lines(kvmmu_tdx.ok("sptes", vm))
    assert table[1].split() == ["direct", "0xfeb00", "1", "0x00000000feb00000", "mmio", "0x0"]


def test_health(kvmmu: Cli) -> None:
    assert kvmmu.ok("health") == "SERVING\n"
    assert json.loads(kvmmu.ok("--json", "health", "--timeout", "3")) == {"status": "SERVING"}
    unknown = kvmmu("health", "--service", "no.such.Service")
    assert (unknown.code, unknown.out) == (1, "SERVICE_UNKNOWN\n")


def test_color_is_forced_on_request(kvmmu: Cli) -> None:
    out = kvmmu.ok("--color", "always", "host", "profiles")
    assert "\x1b[" in out


def test_events_follow_streams_until_interrupted(kvmmu: Cli, vm: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVMMU_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "client.cli", "--server", str(kvmmu.server), "events", vm,
         "--follow", "--name", "kvm_mmu_set_spte"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        line, gfn = "", 0x10
        while not line and time.monotonic() < deadline:
            gfn += 1  # a new page each time: faults before the stream opens go unseen
            kvmmu.ok("fault", vm, hex(gfn << 12))
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if ready:
                assert proc.stdout is not None
                line = proc.stdout.readline()
        assert "kvm_mmu_set_spte: gfn " in line  # flushed as it happens
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
        proc.communicate()  # closes the pipes even when the test failed
    assert proc.returncode == 130 and err == ""


def test_fault_labels_every_error_code_bit_and_batch_shows_no_spte_as_dash(kvmmu: Cli) -> None:
    vm = unique_id("ec")
    kvmmu.ok("vm", "create", "--id", vm, "--type", "sw-protected")
    kvmmu.ok("memslot", "set", vm, "--slot", "1", "--gpa", "1G", "--size", "2M")
    out = lines(kvmmu.ok("fault", vm, "0x40000000", "--write", "--private", "--explain"))
    assert out[0] == "outcome         EFAULT" and "spte            -" in out
    assert any(
        "error code 0x2000000000002 (W|PRIVATE): GFN 0x40000, private access" in line
        for line in out
    )
    batch = lines(
        kvmmu.ok("fault", vm, "--from-file", "-", stdin="0x40000000 0x2000000000002\n0x40001000\n")
    )
    assert batch == [
        "GPA         GFN      OUTCOME  LEVEL  SPTE",
        "0x40000000  0x40000  EFAULT       -  -",
        "0x40001000  0x40001  FIXED        1  0x8600000000001b77",
        "2 faults: FIXED 1, EFAULT 1",
    ]


def test_set_mmio_value_refusal_names_the_cli_option(kvmmu: Cli, vm: str) -> None:
    kvmmu.ok("fault", vm, "0x1000")
    refused = kvmmu.fails(1, "vm", "set-mmio-value", vm, "0x3")
    assert "(pass --zap)" in refused and "zap_existing" not in refused


def test_report_of_a_server_vm_in_json(kvmmu: Cli, vm: str, tmp_path: Path) -> None:
    kvmmu.ok("fault", vm, "0x1000")
    page = tmp_path / "vm.html"
    data = json.loads(kvmmu.ok("--json", "report", vm, "--html", str(page)))
    assert data == {"path": str(page), "bytes": page.stat().st_size}
    assert page.read_text().startswith("<!DOCTYPE html>")
