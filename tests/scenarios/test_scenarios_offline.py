"""Every shipped scenario passes in process, and the format rejects bad files clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.scenario.format import ScenarioError, load, parse
from client.scenario.offline import OfflineBackend
from client.scenario.runner import run

SCENARIOS = sorted((Path(__file__).resolve().parents[2] / "scenarios").glob("*.toml"))


def test_the_mmio_value_story_is_shipped() -> None:
    names = {p.stem for p in SCENARIOS}
    assert {
        "vmx-vs-tdx-mmio",
        "mmio-caching-disabled",
        "generation-stale",
        "sev-es-needs-mmio-caching",
        "dirty-logging",
    } <= names


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_scenario_passes_offline(path: Path) -> None:
    scenario = load(path)
    result = run(scenario, OfflineBackend(scenario))
    problems = [(s.step.label, s.failures) for s in result.steps if s.failures]
    assert result.setup_error is None and not problems
    assert any(s.step.expect for s in result.steps)  # every scenario checks something


def test_failed_expectation_reports_what_differed() -> None:
    scenario = parse(
        """
        name = "wrong"
        [[vms]]
        id = "vm"
        [[steps]]
        op = "fault"
        gpa = "0xfeb00000"
        expect = { outcome = "RET_PF_FIXED" }
        """
    )
    result = run(scenario, OfflineBackend(scenario))
    assert not result.ok
    assert result.steps[0].failures == ["expected outcome 'RET_PF_FIXED', got 'RET_PF_EMULATE'"]


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('name = "x"', "vms"),
        ('name = "x"\n[[vms]]\nid = "a"\ntype = "kvm"', "vms[0].type"),
        ('name = "x"\n[[vms]]\nid = "a"\n[[steps]]\nop = "explode"', "steps[0].op"),
        ('name = "x"\n[[vms]]\nid = "a"\n[[steps]]\nop = "fault"', "steps[0]"),
        (
            'name = "x"\n[[vms]]\nid = "a"\n[[steps]]\nop = "stats"\nexpect = { outcome = 1 }',
            "steps[0].expect",
        ),
        ("not toml [", ""),
    ],
)
def test_bad_files_name_the_field(text: str, where: str) -> None:
    with pytest.raises(ScenarioError) as err:
        parse(text, "my.toml")
    assert err.value.where == where
    assert str(err.value).startswith(f"my.toml: {where + ': ' if where else ''}")
