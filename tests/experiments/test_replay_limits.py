"""Replays are bounded: at most MAX_RUNNING jobs at once in a process, the next is refused until
one ends, and only the latest MAX_KEPT jobs are remembered."""

from __future__ import annotations

import asyncio

import pytest

from experiments_support import db  # noqa: F401 (a fixture)
from shipyard.experiments.replay import MAX_RUNNING, ReplayBusy, Replayer, ReplayIn
from shipyard.experiments.spec import ExperimentSpec


class HeldEngine:
    """An engine whose answers wait for the test to let them go."""

    def __init__(self):
        self.release = asyncio.Event()

    async def generate(self, request):
        await self.release.wait()
        raise RuntimeError("released")  # a failed copy: the job still ends
        yield  # an async generator


async def test_running_jobs_are_bounded_and_ended_ones_let_the_next_in(db):
    engine = HeldEngine()
    replayer = Replayer(lambda: {"a": engine, "b": engine}, None, db, lambda *a: 0.0, None)
    spec = ExperimentSpec(name="x", model="a", mode="champion_challenger",
                          arms=[{"name": "champion", "deployment": "a"}, {"name": "challenger", "deployment": "b"}])
    body = ReplayIn.model_validate({"dataset": [{"prompt": "hi"}]})
    jobs = [replayer.start(spec, body) for _ in range(MAX_RUNNING)]
    with pytest.raises(ReplayBusy):
        replayer.start(spec, body)
    engine.release.set()
    await asyncio.wait_for(asyncio.gather(*replayer._tasks.values()), 10)
    assert [j.status for j in jobs] == ["done"] * MAX_RUNNING and all(j.failed == 1 for j in jobs)
    assert replayer.start(spec, body).status == "running"
    await replayer.stop()
