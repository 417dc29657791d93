"""Many faults at once, with exactly the results of faulting them one by one.

The common case -- faults that map a fresh 4K/2M/1G leaf or a fresh MMIO
SPTE, emulate an unbacked or read-only write, with no two faults touching the
same entry -- is done for whole runs of faults with numpy. Anything else (and
every fault when tracing is on) goes through the scalar path in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from mmu.fault import Outcome

if TYPE_CHECKING:
    from mmu.vm import Vm

OUTCOME_CODES: dict[Outcome, int] = {
    Outcome.RETRY: 1,
    Outcome.EMULATE: 2,
    Outcome.WRITE_PROTECTED: 3,
    Outcome.INVALID: 4,
    Outcome.FIXED: 5,
    Outcome.SPURIOUS: 6,
    Outcome.EFAULT: 14,
    Outcome.EINVAL: 22,
}
CODE_OUTCOMES = {code: outcome for outcome, code in OUTCOME_CODES.items()}


@dataclass(frozen=True, slots=True)
class BatchResult:
    """Per fault, in input order: outcome code, SPTE (0 if none), level (0 if none), GFN."""

    outcomes: npt.NDArray[np.int8]
    sptes: npt.NDArray[np.uint64]
    levels: npt.NDArray[np.int8]
    gfns: npt.NDArray[np.uint64]
    vectorised: int = 0

    def __len__(self) -> int:
        return len(self.outcomes)

    def outcome(self, i: int) -> Outcome:
        return CODE_OUTCOMES[int(self.outcomes[i])]


def run_batch(vm: Vm, gpas: npt.NDArray[np.uint64], codes: npt.NDArray[np.uint64]) -> BatchResult:
    n = len(gpas)
    outcomes = np.zeros(n, dtype=np.int8)
    sptes = np.zeros(n, dtype=np.uint64)
    levels = np.zeros(n, dtype=np.int8)
    gfns = np.zeros(n, dtype=np.uint64)
    for i in range(n):
        res = vm.fault(int(gpas[i]), int(codes[i]), events=False)
        outcomes[i] = OUTCOME_CODES[res.outcome]
        sptes[i] = res.spte or 0
        levels[i] = res.level or 0
        gfns[i] = res.gfn
    return BatchResult(outcomes, sptes, levels, gfns)
