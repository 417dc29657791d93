"""What a scenario needs from whatever runs it: the model in process, or a server.

Both backends return the same plain values for every operation, so a
scenario gives identical results offline and against a server.
"""

from __future__ import annotations

from typing import Any, Protocol

from client.scenario.format import VmSpec
from mmu.host import Host
from mmu.memslots import Memslot

Row = tuple[str, int, int, int]  # root, gfn, level, value


class StepFailed(Exception):
    """The operation was refused; `message` is what the backend said."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Backend(Protocol):
    """One VM namespace on one host. Methods raise StepFailed when refused."""

    host: Host

    def create_vm(self, spec: VmSpec) -> None: ...

    def mmio_value(self, vm: str) -> int: ...

    def guest_maxphyaddr(self, vm: str) -> int: ...

    def set_memslot(self, vm: str, slot: Memslot) -> dict[str, Any]: ...

    def delete_memslot(self, vm: str, slot: int) -> dict[str, Any]: ...

    def move_memslot(self, vm: str, slot: int, base_gfn: int) -> dict[str, Any]: ...

    def dirty_logging(self, vm: str, slot: int, enable: bool) -> dict[str, Any]: ...

    def get_dirty_log(self, vm: str, slot: int) -> dict[str, Any]: ...

    def attributes(self, vm: str, start: int, end: int, private: bool) -> dict[str, Any]: ...

    def set_mmio_value(self, vm: str, value: int, zap: bool) -> dict[str, Any]: ...

    def fault(self, vm: str, gpa: int, error_code: int) -> dict[str, Any]: ...

    def zap(
        self, vm: str, *, start: int, end: int, all_: bool, slot: int | None
    ) -> dict[str, Any]: ...

    def age(self, vm: str, start: int, end: int, test: bool) -> dict[str, Any]: ...

    def dump(self, vm: str, start: int, end: int | None) -> list[Row]: ...

    def stats(self, vm: str) -> dict[str, int]: ...

    def close(self) -> None: ...
