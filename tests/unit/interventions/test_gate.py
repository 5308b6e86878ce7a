"""The commit gate: steps side by side, a commit alone and between steps, never starved."""

from __future__ import annotations

import asyncio
import contextlib

from streams.interventions.gate import CommitGate


def test_steps_run_side_by_side() -> None:
    async def run() -> int:
        gate, inside, most = CommitGate(), 0, 0

        async def step() -> None:
            nonlocal inside, most
            async with gate.step():
                inside += 1
                most = max(most, inside)
                await asyncio.sleep(0.01)
                inside -= 1

        await asyncio.gather(*(step() for _ in range(3)))
        return most

    assert asyncio.run(run()) == 3


def test_a_commit_waits_for_the_steps_under_way_and_holds_new_ones_back() -> None:
    async def run() -> list[str]:
        gate, order = CommitGate(), []
        release = asyncio.Event()

        async def long_step() -> None:
            async with gate.step():
                order.append("step 1 writes")
                await release.wait()
                order.append("step 1 acked")

        async def commit() -> None:
            async with gate.commit():
                order.append("commit")

        async def later_step() -> None:
            async with gate.step():
                order.append("step 2")

        first = asyncio.create_task(long_step())
        await asyncio.sleep(0)
        committing = asyncio.create_task(commit())
        await asyncio.sleep(0)
        second = asyncio.create_task(later_step())  # arrives while the commit waits: it goes after it
        await asyncio.sleep(0.01)
        assert order == ["step 1 writes"]
        release.set()
        await asyncio.gather(first, committing, second)
        return order

    assert asyncio.run(run()) == ["step 1 writes", "step 1 acked", "commit", "step 2"]


def test_a_step_that_raises_still_lets_the_commit_through() -> None:
    async def run() -> bool:
        gate = CommitGate()

        async def failing() -> None:
            async with gate.step():
                raise RuntimeError("send failed")

        with contextlib.suppress(RuntimeError):
            await failing()
        async with gate.commit():
            return True

    assert asyncio.run(run())
