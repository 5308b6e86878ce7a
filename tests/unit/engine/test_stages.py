"""The stages before inference, over one batch: decode, route (separate and combined), dedupe."""

from __future__ import annotations

import orjson

from streams.config import InputSettings, ReplicaSettings, SchemaRegistrySettings
from streams.config import Route as RouteRule
from streams.engine.stages import Decode, Dedupe, Route
from streams.engine.work import Work
from streams.errors import ErrorType
from streams.inference.cache import DedupeCache
from streams.inference.labeler import Decision, Labeler
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
    assert [w.content for w in works] == ["hi", "user: u\nassistant: a"]
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
