"""The stages before inference, over one batch: decode, route (separate and combined), dedupe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson

from streams.config import InputSettings, ReplicaSettings, SchemaRegistrySettings
from streams.config import Route as RouteRule
from streams.engine.stages import Decode, Dedupe, Route
from streams.engine.work import Work
from streams.errors import ErrorType
from streams.inference.cache import DedupeCache
from streams.inference.labeler import Decision, Labeler
from streams.inference.prompt import CHAT_HEADER
from streams.inference.verdict import Verdict
from streams.policy.model import STARTER_POLICIES, load_policies, parse_policy
from streams.policy.registry import PolicyRegistry
from streams.wire.codec import Decoder

POLICIES = load_policies(STARTER_POLICIES)


def batch(*values: bytes) -> list[Work]:
    return [Work(("in", 0), i, None, v, 0.0) for i, v in enumerate(values)]


def decoded(*events: dict) -> list[Work]:
    works = batch(*(orjson.dumps(e) for e in events))
    Decode(Decoder(InputSettings(), SchemaRegistrySettings()))(works)
    return works


def test_decode_keeps_the_event_and_the_text_the_model_reads() -> None:
    works = decoded({"event_id": "a", "text": "hi"},
                    {"event_id": "b", "kind": "chat", "messages": [{"role": "user", "content": "u"},
                                                                  {"role": "assistant", "content": "a"}]})
    assert [w.content for w in works] == ["hi", "\n".join([CHAT_HEADER, '{"role": "user", "content": "u"}',
                                                             '{"role": "assistant", "content": "a"}'])]
    bad = batch(b"[1, 2]")
    Decode(Decoder(InputSettings(), SchemaRegistrySettings()))(bad)
    assert bad[0].failure is not None and bad[0].failure.error_type == ErrorType.SCHEMA_VIOLATION
    assert bad[0].event is None and not bad[0].open


def test_route_makes_one_request_per_policy_or_one_combined_plus_shadows() -> None:
    shadow = parse_policy("---\nid: spam-v2\nshadow: true\n---\nbody\n")
    registry = PolicyRegistry({**POLICIES, "spam-v2": shadow}, [RouteRule(kind="chat", policies=["game-cheating"])],
                              ["spam", "fake-reviews", "spam-v2"])
    works = decoded({"event_id": "a", "text": "x"}, {"event_id": "b", "kind": "chat", "messages": [
        {"role": "user", "content": "c"}]}, {"event_id": "c", "text": "x", "policies": ["nope"]})
    Route(registry, "separate")(works)
    assert [[p.id for p in r.policies] for r in works[0].requests] == [["spam"], ["fake-reviews"], ["spam-v2"]]
    assert [[p.id for p in r.policies] for r in works[1].requests] == [["game-cheating"]]
    assert works[2].failure is not None and works[2].failure.error_type == ErrorType.UNKNOWN_POLICY
    works = decoded({"event_id": "a", "text": "x"})
    Route(registry, "combined")(works)
    assert [[p.id for p in r.policies] for r in works[0].requests] == [["spam", "fake-reviews"], ["spam-v2"]]


def test_dedupe_turns_cached_decisions_into_outcomes_and_keys_the_misses() -> None:
    cache: DedupeCache[Decision] = DedupeCache(10)
    labeler = Labeler(None, ReplicaSettings(), default_effort="low", cache=cache)  # type: ignore[arg-type]
    spam = POLICIES["spam"]
    known = labeler.cache_key(spam, "seen before")
    assert known is not None
    cache._store(known, Decision(Verdict(True, "SP2"), "why", 10, 5, 1))
    registry = PolicyRegistry(POLICIES, [], ["spam", "fake-reviews"])
    works = decoded({"event_id": "a", "text": "Seen   BEFORE"}, {"event_id": "b", "text": "new"})
    Route(registry, "separate")(works)
    Dedupe(labeler)(works)
    hit, miss = works
    assert [(o.policy.id, o.decided_by) for o in hit.outcomes] == [("spam", "cache")]
    assert [r.policies[0].id for r in hit.requests] == ["fake-reviews"]  # not decided yet for that policy
    assert all(r.cache_key is not None for r in hit.requests + miss.requests) and not miss.outcomes
    assert cache.hits == 1 and cache.lookups == 4


def prefilter_stage(threshold: float, audit_rate: float = 0.0, *, policies: tuple[str, ...] = ("spam",)) -> Any:
    from streams.cascade.live import LiveCascade
    from streams.cascade.model import BITS
    from streams.cascade.model import Prefilter as Model
    from streams.cascade.registry import Prefilters
    from streams.config import PrefilterSettings
    from streams.engine.stages import Prefilter
    from streams.ops.metrics import build_metrics

    models: dict[str, Any] = {}

    class Fixed(Prefilters):
        """Scores every text by the number of '!' in it, minus 1."""

        def current(self, policy: Any) -> Any:
            if policy.id not in policies:
                return None
            if policy.id not in models:
                model = Model(policy.id, policy.version, threshold, np.zeros(2**BITS, dtype=np.float32), 0.0)
                model.score_normalised = lambda texts, coverage=False: (  # type: ignore[method-assign]
                    np.array([t.count("!") - 1.0 for t in texts]), None)
                models[policy.id] = model
            return models[policy.id]

    metrics = build_metrics()
    live = LiveCascade(PrefilterSettings(), metrics)
    return Prefilter(Fixed(Path(".")), audit_rate, metrics, live), metrics


def test_the_prefilter_decides_below_its_threshold_and_sends_the_rest() -> None:
    stage, metrics = prefilter_stage(threshold=0.5)
    registry = PolicyRegistry(POLICIES, [], ["spam", "fake-reviews"])
    works = decoded({"event_id": "a", "text": "calm"}, {"event_id": "b", "text": "buy!! now!!"})
    Route(registry, "separate")(works)
    stage(works)
    calm, loud = works
    assert [(o.policy.id, o.decided_by, o.verdict.violation) for o in calm.outcomes] == [("spam", "prefilter", False)]
    assert [r.policies[0].id for r in calm.requests] == ["fake-reviews"]  # no prefilter for that one
    assert loud.outcomes == [] and [r.policies[0].id for r in loud.requests] == ["spam", "fake-reviews"]
    assert calm.prefilter is not None and loud.prefilter is not None
    assert calm.prefilter["spam"][:4] == (-1.0, False, (), False)
    assert loud.prefilter["spam"][:4] == (3.0, False, (), False)
    sample = metrics.registry.get_sample_value
    assert sample("safeguard_prefilter_decisions_total", {"policy": "spam", "outcome": "skipped"}) == 1
    assert sample("safeguard_prefilter_decisions_total", {"policy": "spam", "outcome": "sent"}) == 1


def test_in_combined_mode_a_decided_policy_leaves_its_group() -> None:
    stage, _ = prefilter_stage(threshold=0.5, policies=("spam",))
    registry = PolicyRegistry(POLICIES, [], ["spam", "fake-reviews", "game-cheating"])
    works = decoded({"event_id": "a", "text": "calm"})
    Route(registry, "combined")(works)
    stage(works)
    [work] = works
    assert [[p.id for p in r.policies] for r in work.requests] == [["fake-reviews", "game-cheating"]]
    assert [o.policy.id for o in work.outcomes] == ["spam"]


def test_the_audit_sample_is_deterministic_and_near_its_rate() -> None:
    stage, metrics = prefilter_stage(threshold=0.5, audit_rate=0.1)
    registry = PolicyRegistry(POLICIES, [], ["spam"])
    events = [{"event_id": f"e{i}", "text": "calm"} for i in range(2000)]
    first, again = decoded(*events), decoded(*events)
    for works in (first, again):
        Route(registry, "separate")(works)
        stage(works)
    audited = [w.prefilter["spam"][1] for w in first]  # type: ignore[index]
    assert audited == [w.prefilter["spam"][1] for w in again]  # type: ignore[index]
    assert 150 <= sum(audited) <= 250  # 10% of 2,000, within about 3.5 standard deviations
    assert all(bool(w.requests) == a for w, a in zip(first, audited, strict=True))  # audited pairs go to the model


def test_text_with_an_evasion_signal_is_never_decided_by_the_prefilter() -> None:
    stage, metrics = prefilter_stage(threshold=0.5)
    registry = PolicyRegistry(POLICIES, [], ["spam"])
    works = decoded({"event_id": "a", "text": "calm"}, {"event_id": "b", "text": "c\u200bal\u200bm"},
                    {"event_id": "c", "text": "c a l m  d o w n"}, {"event_id": "d", "text": "\u0441\u0430lm"})
    Route(registry, "separate")(works)
    stage(works)
    plain, invisible, spaced, cyrillic = works
    assert [o.decided_by for o in plain.outcomes] == ["prefilter"]
    for work, flag in ((invisible, "invisible_chars"), (spaced, "spaced_letters"), (cyrillic, "mixed_script")):
        assert work.outcomes == [] and [r.policies[0].id for r in work.requests] == ["spam"]  # to the model
        assert work.prefilter is not None and flag in work.prefilter["spam"][2]
        assert work.content != plain.content  # the model reads the original text
        assert metrics.registry.get_sample_value("safeguard_prefilter_evasion_total",
                                                 {"policy": "spam", "flag": flag}) >= 1
    assert invisible.normalised is not None and invisible.normalised[0] == "calm"  # what the prefilter scored


def test_a_score_at_the_threshold_is_sent_whatever_its_rounding() -> None:
    """The label shows the score to 4 decimals; the decision compares the unrounded one (a threshold
    can sit closer than 5e-5 below a violation's score)."""
    stage, _ = prefilter_stage(threshold=1.23453)
    registry = PolicyRegistry(POLICIES, [], ["spam"])
    works = decoded({"event_id": "a", "text": "x"})
    Route(registry, "separate")(works)
    model = stage._prefilters.current(POLICIES["spam"])
    model.score_normalised = lambda texts, coverage=False: (np.array([1.23454] * len(texts)), None)
    stage(works)
    assert works[0].outcomes == [] and works[0].prefilter["spam"][0] == 1.23454  # sent to the model
