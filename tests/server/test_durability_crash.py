"""Crash test: a real server under concurrent mutation load, SIGKILLed at random moments.

Each of several client threads owns one VM (created, changed in every way the
API allows, deleted and re-created) and records every answer. After each kill
the server restarts from its state directory, and each VM's full dump must
equal the dump of a fresh in-process model (mmu + server.apply) fed the
acknowledged operations in order, where the one op per client that got no
answer may be applied or not, but never half (tests/server/durable_model.py).
The durability level alternates between rounds; snapshots are taken every few
dozen records, so kills also land in the middle of snapshots.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmmu.v1 import service_pb2_grpc, vm_pb2
from tests.server.conftest import ServerProcess, start_server
from tests.server.crash_load import Belief, Client
from tests.server.durable_model import Candidates, server_fingerprint

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]
CLIENTS = 4
KILLS = 12


def serve(state: Path, level: str) -> ServerProcess:
    return start_server(
        "--state-dir", str(state), "--durability", level, "--snapshot-every", "40",
        "--log-level", "warning",
    )  # fmt: skip


def check(srv: ServerProcess, models: list[Candidates]) -> list[Belief]:
    """The server's VMs are exactly those some consistent outcome has, each matching one."""
    with srv.channel() as channel:
        stub = service_pb2_grpc.MmuServiceStub(channel)
        listed = {vm.vm_id for vm in stub.ListVms(vm_pb2.ListVmsRequest(page_size=100)).vms}
        assert listed <= {m.vm_id for m in models}, listed
        beliefs = []
        for model in models:
            observed = server_fingerprint(stub, model.vm_id)
            assert (observed is not None) == (model.vm_id in listed)
            model.match(observed)
            beliefs.append(Belief.of(observed))
    return beliefs


@pytest.fixture
def servers() -> Iterator[list[ServerProcess]]:
    """Every server the test starts; whatever happens, none outlives it."""
    started: list[ServerProcess] = []
    yield started
    for srv in started:
        if srv.proc.poll() is None:
            srv.proc.kill()
        srv.stop()


def test_sigkill_under_load_loses_nothing_acknowledged(
    tmp_path: Path, servers: list[ServerProcess]
) -> None:
    rng = random.Random(7)
    state = tmp_path / "state"
    models = [Candidates(f"crash-{i}") for i in range(CLIENTS)]
    beliefs = [Belief() for _ in models]
    for round_ in range(KILLS):
        srv = serve(state, "power" if round_ % 2 else "process")
        servers.append(srv)
        if round_:
            beliefs = check(srv, models)
        channel = srv.channel()
        clients = [
            Client(channel, m.vm_id, b, seed=round_ * 100 + i)
            for i, (m, b) in enumerate(zip(models, beliefs, strict=True))
        ]
        for client in clients:
            client.start()
        time.sleep(rng.uniform(0.1, 1.0))
        srv.proc.send_signal(signal.SIGKILL)
        assert srv.proc.wait(30) == -signal.SIGKILL
        for client in clients:
            client.join(30)
            assert not client.is_alive()
        channel.close()
        for model, client in zip(models, clients, strict=True):
            for answer in client.answers:
                if answer.acked:
                    model.acknowledged(answer.make, answer.succeeded, answer.reply)
                else:
                    model.unacknowledged(answer.make)
    # A graceful stop (final snapshot) and a start from the snapshots alone.
    for level in ("process", "power"):
        srv = serve(state, level)
        servers.append(srv)
        if level == "power":  # after the graceful stop: from its final snapshots alone
            assert "and 0 journal records replayed" in "".join(srv.banner), srv.banner
        check(srv, models)
        assert srv.stop() == 0
    acked = sum(m.acked for m in models)
    outcomes = {k: sum(m.outcomes[k] for m in models) for k in ("present", "absent", "either")}
    assert acked > 300, acked  # the load did something worth checking
    assert sum(outcomes.values()) >= KILLS, outcomes  # each kill left unanswered ops
