"""Every value of a scenario is checked when it loads, naming the file, step and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.scenario.format import ScenarioError, load, parse
from client.scenario.offline import OfflineBackend
from client.scenario.runner import run
from tests.cli.conftest import Cli

HEAD = 'name = "t"\n[[vms]]\nid = "vm"\n'
SLOT = '[[steps]]\nop = "memslot"\nslot = 0\ngpa = 0\nsize = "1G"\n'


def with_step(step: str, head: str = HEAD) -> str:
    """A scenario whose step 0 is a valid memslot and step 1 is `step`."""
    return f"{head}{SLOT}[[steps]]\n{step}\n"


FAULT = 'op = "fault"\ngpa = 0\n'
NEW_SLOT = 'op = "memslot"\nslot = 1\ngpa = "2G"\nsize = "2M"\n'
DUMP = 'op = "dump"\n'


@pytest.mark.parametrize(
    ("step", "key", "says"),
    [
        ('op = "fault"\ngpa = "0xzz"', "gpa", "expected a number"),
        ('op = "zap"\ngpa = 0\nsize = "-4K"', "size", "must not be negative"),
        ('op = "zap"\ngpa = 0\nsize = -4', "size", "must not be negative"),
        ('op = "fault"\ngpa = "0x10000000000000000"', "gpa", "64 bits"),
        ('op = "fault"\ngpa = 1.5', "gpa", "expected a number"),
        (FAULT + 'access = "writ"', "access", "unknown access 'writ'"),
        (FAULT + 'present = "false"', "present", "true or false"),
        (NEW_SLOT + 'backing = "3M"', "backing", "4K, 2M, 1G"),
        ('op = "zap"\nall = false', "", "all = true"),
        ('op = "dump"\ngpa = 0', "", "gpa and size together"),
        ('op = "create_vm"\nvm = "b"\ntype = "vmx"', "type", "unknown VM type 'vmx'"),
        (FAULT + 'expect = { outcome = "FIXD" }', "expect.outcome", "RET_PF_FIXED"),
        (FAULT + "expect = { mmio_check = 2 }", "expect.mmio_check", "unknown outcome"),
        (FAULT + "expect = { level = 7 }", "expect.level", "1 (4K) to 5"),
        (FAULT + 'expect = { kind = "leef" }', "expect.kind", "unknown SPTE kind"),
        (FAULT + 'expect = { spte = "0xq" }', "expect.spte", "expected a number"),
        (FAULT + "expect = { mmio = 1 }", "expect.mmio", "true or false"),
        (FAULT + 'expect = { fields = { PFN = "zz" } }', "expect.fields.PFN", "expected a number"),
        (FAULT + 'expect = { error = "no" }', "expect.error", "true or false"),
        (DUMP + "expect = { kinds = { leef = 1 } }", "expect.kinds", "unknown names ['leef']"),
        (DUMP + 'expect = { sptes = [{ gfn = "0xq" }] }', "expect.sptes[0].gfn", "a number"),
        (DUMP + "expect = { sptes = [{ pfn = 1 }] }", "expect.sptes[0]", "unknown keys ['pfn']"),
        (DUMP + 'expect = { count = "two" }', "expect.count", "expected a number"),
        ('op = "stats"\nexpect = { stats = { pf_fixd = 1 } }', "expect.stats", "pf_fixed"),
        (NEW_SLOT + 'expect = { result = "fine" }', "expect.result", "ok, noop, EINVAL"),
        (NEW_SLOT + 'expect = { zap = "all" }', "expect.zap", "fast_zap_all"),
        (
            'op = "get_dirty_log"\nslot = 0\nexpect = { dirty = [1, "x"] }',
            "expect.dirty[1]",
            "number",
        ),
        ('op = "age"\ngpa = 0\nsize = "4K"\nexpect = { young = "yes" }', "expect.young", "true or"),
    ],
)
def test_a_bad_value_is_refused_at_load(step: str, key: str, says: str) -> None:
    where = f"steps[1].{key}" if key else "steps[1]"
    with pytest.raises(ScenarioError) as err:
        parse(with_step(step), "bad.toml")
    assert err.value.where == where
    assert says in err.value.message
    assert str(err.value).startswith(f"bad.toml: {where}: ")


def vm_with(line: str) -> str:
    return HEAD.replace('id = "vm"', f'id = "vm"\n{line}')


@pytest.mark.parametrize(
    ("text", "where", "says"),
    [
        (vm_with('tracing = "yes"'), "vms[0].tracing", "true or false"),
        (vm_with('guest_maxphyaddr = "x"'), "vms[0].guest_maxphyaddr", "number"),
        (HEAD + '[host]\nprofile = "intel-nope"\n', "host", "unknown profile"),
        (HEAD + "[host]\nspeed = 1\n", "host", "unknown keys ['speed']"),
        (HEAD + '[host.set]\nmmio_caching = "false"\n', "host.set.mmio_caching", "true or false"),
        (HEAD + "[host.set]\nphys_bits = true\n", "host.set.phys_bits", "expected an integer"),
        (HEAD + "[host.set]\nwarp = 1\n", "host.set.warp", "unknown host field"),
        (HEAD + "[host.set]\nphys_bits = 60\n", "host.set.phys_bits", "between 32 and 52"),
    ],
)
def test_a_bad_vm_or_host_is_refused_at_load(text: str, where: str, says: str) -> None:
    with pytest.raises(ScenarioError) as err:
        parse(text, "bad.toml")
    assert (err.value.where, err.value.source) == (where, "bad.toml")
    assert says in err.value.message


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [
        ("RET_PF_FIXED", "RET_PF_FIXED"),
        ("FIXED", "RET_PF_FIXED"),  # the CLI's spelling
        ("FAULT_OUTCOME_FIXED", "RET_PF_FIXED"),  # the --json enum name
        ("fixed", "RET_PF_FIXED"),
        ("EFAULT", "EFAULT"),
        ("-EFAULT", "EFAULT"),  # FaultOutcome.kernel_name
        ("FAULT_OUTCOME_EFAULT", "EFAULT"),
        ("ret_pf_emulate", "RET_PF_EMULATE"),
    ],
)
def test_outcome_spellings_are_aliases(spelling: str, canonical: str) -> None:
    step = parse(with_step(f'op = "fault"\ngpa = 0\nexpect = {{ outcome = "{spelling}" }}'))
    assert step.steps[1].expect["outcome"] == canonical


def test_aliased_outcomes_pass_when_run() -> None:
    scenario = parse(
        HEAD
        + SLOT
        + '[[steps]]\nop = "fault"\ngpa = "0x1000"\nexpect = { outcome = "FIXED" }\n'
        + '[[steps]]\nop = "fault"\ngpa = "0xfeb00000"\n'
        + 'expect = { outcome = "FAULT_OUTCOME_EMULATE" }\n'
        + '[[steps]]\nop = "fault"\ngpa = "0xfeb00000"\nrsvd = true\n'
        + 'expect = { outcome = "emulate", mmio_check = "EMULATE" }\n'
    )
    result = run(scenario, OfflineBackend(scenario))
    assert result.ok, [s.failures for s in result.steps]


def test_values_are_parsed_once_at_load() -> None:
    scenario = parse(
        with_step('op = "memslot"\nslot = "0x1"\ngpa = "4G"\nsize = "2M"\nbacking = "2m"')
    )
    step = scenario.steps[1]
    assert step.args == {"slot": 1, "gpa": 1 << 32, "size": 2 << 20, "backing": "2M"}
    assert step.params["gpa"] == "4G"  # as written, for the step's label
    assert step.label == "step 1 (memslot vm slot=0x1 gpa=4G size=2M backing=2m)"


def test_a_file_that_is_not_text_names_the_file(tmp_path: Path) -> None:
    binary = tmp_path / "ls"
    binary.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(128, 256)))
    with pytest.raises(ScenarioError) as err:
        load(binary)
    assert str(err.value).startswith(f"{binary}: not a scenario: not UTF-8 text")


def test_an_unknown_vm_type_for_diff_is_a_scenario_error() -> None:
    scenario = parse(HEAD)
    assert scenario.with_vm_type("SEV_ES").vms[0].type == "sev-es"
    with pytest.raises(ScenarioError, match="unknown VM type 'bogus': expected one of default"):
        scenario.with_vm_type("bogus")


# The CLI: one line on stderr, exit 2, before anything runs.

OFFLINE = Cli(None)


def test_cli_refuses_a_bad_value_before_running(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(with_step('op = "fault"\ngpa = 0\nexpect = { outcome = "FIXD" }'))
    line = OFFLINE.fails(2, "scenario", "run", str(bad), "--offline")
    assert f"{bad}: steps[1].expect.outcome: unknown outcome 'FIXD'" in line
    result = OFFLINE("scenario", "run", str(bad), "--offline")
    assert result.out == ""  # step 0 did not run


def test_cli_refuses_a_binary_file(tmp_path: Path) -> None:
    binary = tmp_path / "ls"
    binary.write_bytes(b"\x7fELF\x02\x01\x01\x00\xd0\xff")
    for command in ("run", "diff"):
        line = OFFLINE.fails(2, "scenario", command, str(binary), "--offline")
        assert f"{binary}: not a scenario: not UTF-8 text" in line


def test_cli_refuses_an_unknown_vm_type_for_diff() -> None:
    path = Path(__file__).resolve().parents[2] / "scenarios" / "one-guest-many-vm-types.toml"
    line = OFFLINE.fails(
        2, "scenario", "diff", str(path), "--vm-types", "default,bogus", "--offline"
    )
    assert "--vm-types" in line
    assert "unknown VM type 'bogus': expected one of default, sw-protected, sev, sev-es" in line
