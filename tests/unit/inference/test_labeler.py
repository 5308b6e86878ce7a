"""The labeler over a scripted pool: retries of unusable answers, rejected requests, combined mode,
the dedupe cache (hits, single flight)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from streams.config import ReplicaSettings
from streams.errors import ErrorType, PoisonError
from streams.inference.cache import DedupeCache
from streams.inference.labeler import Decision, Labeler
from streams.inference.replicas.client import ChatResult
from streams.policy.model import STARTER_POLICIES, load_policies

POLICIES = load_policies(STARTER_POLICIES)
SPAM, CHEAT = POLICIES["spam"], POLICIES["game-cheating"]
YES = '{"violation": 1, "policy_category": "SP2", "rationale": "bulk"}'
NO = '{"violation": 0, "policy_category": null}'


class ScriptedPool:
    """Answers requests in order from ``script`` (a final answer, an exception, or an Event to wait on)."""

    def __init__(self, *script: Any) -> None:
        self.script = list(script)
        self.bodies: list[dict[str, Any]] = []

    async def chat(self, body: dict[str, Any], lane: Any = None) -> ChatResult:
        self.bodies.append(body)
        step = self.script.pop(0)
        if isinstance(step, asyncio.Event):
            await step.wait()
            step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        finish = "length" if step is None else "stop"
        return ChatResult(step, f"thinking {len(self.bodies)}", finish, 90, 30, "fake://r", 0.01)


def labeler(pool: ScriptedPool, *, attempts: int = 3, cache: bool = False) -> Labeler:
    store: DedupeCache[Decision] | None = DedupeCache(100) if cache else None
    return Labeler(pool, ReplicaSettings(max_attempts=attempts), default_effort="low", cache=store)  # type: ignore[arg-type]


async def test_unusable_answers_are_retried_then_the_verdict_counts_its_attempts() -> None:
    pool = ScriptedPool("I think it is fine", None, YES)
    [outcome] = await labeler(pool).label([SPAM], "buy now")
    assert outcome.failure is None and outcome.verdict is not None and outcome.verdict.violation
    assert outcome.attempts == 3 and (outcome.prompt_tokens, outcome.completion_tokens) == (90, 30)
    assert outcome.decided_by == "model" and len(pool.bodies) == 3


async def test_after_the_last_attempt_the_failure_is_data_with_its_type() -> None:
    pool = ScriptedPool(None, None)
    [outcome] = await labeler(pool, attempts=2).label([SPAM], "x")
    assert outcome.failure is not None and outcome.failure.error_type == ErrorType.TRUNCATED_REASONING
    assert outcome.attempts == 2 and "after 2 attempts" in str(outcome.failure)


async def test_a_rejected_request_is_not_retried() -> None:
    pool = ScriptedPool(PoisonError(ErrorType.REQUEST_REJECTED, "HTTP 400: prompt too long"), YES)
    [outcome] = await labeler(pool).label([SPAM], "x" * 10)
    assert outcome.failure is not None and outcome.failure.error_type == ErrorType.REQUEST_REJECTED
    assert outcome.attempts == 1 and len(pool.bodies) == 1


async def test_combined_mode_keeps_good_verdicts_and_retries_only_for_the_rest() -> None:
    first = orjson.dumps({"spam": orjson.loads(YES), "game-cheating": "??"}).decode()
    second = orjson.dumps({"spam": orjson.loads(NO), "game-cheating": orjson.loads(NO)}).decode()
    pool = ScriptedPool(first, second)
    spam, cheat = await labeler(pool).label([SPAM, CHEAT], "buy now")
    assert spam.verdict is not None and spam.verdict.violation  # from the first answer, not overwritten
    assert cheat.verdict is not None and not cheat.verdict.violation and cheat.attempts == 2
    assert (spam.reasoning, cheat.reasoning) == ("thinking 1", "thinking 2")  # each with its own answer's
    assert spam.prompt_tokens + cheat.prompt_tokens == 90 and len(pool.bodies) == 2


async def test_combined_mode_dead_letters_only_the_policy_still_unreadable() -> None:
    only_spam = orjson.dumps({"spam": orjson.loads(YES)}).decode()
    pool = ScriptedPool(only_spam, only_spam)
    spam, cheat = await labeler(pool, attempts=2).label([SPAM, CHEAT], "buy now")
    assert spam.failure is None and cheat.failure is not None
    assert cheat.failure.error_type == ErrorType.UNPARSEABLE_OUTPUT and cheat.attempts == 2


async def test_the_cache_decides_a_repeat_and_concurrent_duplicates_share_one_request() -> None:
    gate = asyncio.Event()
    pool = ScriptedPool(gate, YES)
    lab = labeler(pool, cache=True)
    key = lab.cache_key(SPAM, "buy now")
    assert key is not None and lab.cached(SPAM, key) is None
    first = asyncio.create_task(lab.label([SPAM], "buy now", key))
    second = asyncio.create_task(lab.label([SPAM], "BUY   now"))  # normalised to the same key
    await asyncio.sleep(0.01)
    gate.set()
    [a], [b] = await asyncio.gather(first, second)
    assert len(pool.bodies) == 1 and (a.decided_by, b.decided_by) == ("model", "cache")
    assert (b.prompt_tokens, b.completion_tokens) == (0, 0)
    hit = lab.cached(SPAM, key)
    assert hit is not None and hit.decided_by == "cache" and hit.verdict == a.verdict


async def test_a_policy_edit_is_a_different_cache_entry() -> None:
    lab = labeler(ScriptedPool(), cache=True)
    edited = type(SPAM)(meta=SPAM.meta, body=SPAM.body + "\nOne more rule.\n")
    assert lab.cache_key(SPAM, "x") != lab.cache_key(edited, "x")


async def test_decide_raises_for_interactive_callers() -> None:
    with pytest.raises(PoisonError, match="after 1 attempts"):
        await labeler(ScriptedPool("no idea"), attempts=1).decide(SPAM, "x")


async def test_the_lane_goes_to_the_pool_and_its_priority_to_vllm_only_when_asked() -> None:
    """replicas.priority: the request carries vLLM's priority (the event's lane); without it the
    body is exactly what it was (a server without priority scheduling ignores the field, but an
    older one might not)."""
    from streams.inference.replicas.pool import Lane

    lanes: list[Any] = []

    class LanePool(ScriptedPool):
        async def chat(self, body: dict[str, Any], lane: Any = None) -> ChatResult:
            lanes.append(lane)
            return await super().chat(body, lane)

    urgent = Lane(0, 12.5)
    both = orjson.dumps({"spam": orjson.loads(YES), "game-cheating": orjson.loads(NO)}).decode()
    plain = LanePool(YES, both)
    await labeler(plain).label([SPAM], "buy now", lane=urgent)
    await labeler(plain).label([SPAM, CHEAT], "buy now", lane=urgent)
    assert all("priority" not in b for b in plain.bodies) and lanes == [urgent, urgent]
    asked = LanePool(YES, both)
    with_priority = Labeler(asked, ReplicaSettings(priority=True), default_effort="low")  # type: ignore[arg-type]
    await with_priority.label([SPAM], "buy now", lane=urgent)
    await with_priority.label([SPAM, CHEAT], "buy now", lane=Lane(2, 0.0))
    assert [b["priority"] for b in asked.bodies] == [0, 2]
