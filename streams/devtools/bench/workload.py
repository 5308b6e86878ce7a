"""The benchmark's events and policy: short reviews, unique texts (no cache hits unless asked); for
the cascade mode, generated reviews (:mod:`streams.devtools.bench.reviews`) in phases."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from streams.devtools.bench.reviews import Phrasing, Review, ReviewWriter
from streams.devtools.demo import load_samples
from streams.errors import FatalError
from streams.policy.model import STARTER_POLICIES

POLICY_ID = "fake-reviews"


def review_texts() -> list[str]:
    return [s["event"]["text"] for s in load_samples() if s["event"]["kind"] == "review"]


def events(n: int, *, unique: bool = True, prefix: str = "b") -> list[tuple[bytes, bytes]]:
    """``n`` review events; ``unique=False`` repeats one text (the cache-only passthrough run).
    ``prefix`` names the ids (and, when unique, the texts), so a warm-up event is none of them."""
    texts = review_texts()
    out = []
    for i in range(n):
        text = f"{texts[i % len(texts)]} ({prefix} order #{i})" if unique else texts[0]
        out.append((f"{prefix}{i}".encode(), orjson.dumps({"event_id": f"{prefix}{i}", "kind": "review",
                                                         "text": text})))
    return out


def policy_path() -> Path:
    return STARTER_POLICIES / f"{POLICY_ID}.md"


VIOLATION_SHARE = 0.1  # of the cascade stream's steady and shifted phases
HISTORY = 6000  # generated phrasing-A reviews the cascade's prefilter learns from (with the golden set)
HISTORY_VIOLATION_SHARE = 0.3  # enough hold-out positives (~360 at holdout 0.2) to certify recall 0.99
ADVERSARIAL_VIOLATION_SHARE = 0.25
PHASES = {"steady": "st-", "shifted": "sh-", "adversarial": "ad-"}  # in stream order, with their id prefixes


def golden_items() -> list[Any]:
    from streams.authoring.datasets import load_dataset

    return load_dataset(STARTER_POLICIES / f"{POLICY_ID}.golden.jsonl").items


@dataclass(frozen=True)
class Truth:
    """What the bench knows of one cascade event: its phase, the model's answer (the label its
    composition gives), and the obfuscation tricks applied to it (adversarial violations)."""

    phase: str
    label: int
    tricks: tuple[str, ...] = ()


@dataclass(frozen=True)
class CascadeWorkload:
    """The cascade mode's data. ``training``: (text, label) of ``history`` generated phrasing-A
    reviews, then the golden set. ``stream``: the phases of :data:`PHASES` in order, event ids
    prefixed by phase. ``key_rows``: the simulated model's answer key, every generated text
    (obfuscated violations labelled 1: the reasoner reads through the tricks) and the golden set."""

    training: list[tuple[str, int]]
    history: int
    stream: list[tuple[bytes, bytes]]
    truth: dict[str, Truth]
    key_rows: list[dict[str, Any]]


def cascade_workload(n: int, *, seed: int = 11, history: int = HISTORY) -> CascadeWorkload:
    """Training data and one stream: ``n`` steady events (phrasing A, 10% violations), ``n``
    shifted (phrasing B: wordings never seen in training, 10% violations), ``n // 2`` adversarial
    (phrasing-A safe reviews, 25% phrasing-A violations obfuscated by
    :func:`streams.devtools.obfuscate.obfuscate`: every trick alone, and mixes of two and three).
    Every text is unique, across training and the stream."""
    writer = ReviewWriter(seed)
    past = writer.batch(history, "A", HISTORY_VIOLATION_SHARE)
    training = [(r.text, r.label) for r in past] + [(i.text, i.label) for i in golden_items()]
    key_rows = [_key_row(r.text, r) for r in past] + [{"text": i.text, "label": i.label} for i in golden_items()]
    stream: list[tuple[bytes, bytes]] = []
    truth: dict[str, Truth] = {}
    counts = dict.fromkeys(PHASES, 0)

    def emit(phase: str, review: Review, text: str, tricks: tuple[str, ...] = ()) -> None:
        event_id = f"{PHASES[phase]}{counts[phase]}"
        counts[phase] += 1
        stream.append((event_id.encode(), orjson.dumps({"event_id": event_id, "kind": "review", "text": text})))
        truth[event_id] = Truth(phase, review.label, tricks)
        key_rows.append(_key_row(text, review))

    ordinary: tuple[tuple[str, Phrasing], ...] = (("steady", "A"), ("shifted", "B"))
    for phase, phrasing in ordinary:
        for r in writer.batch(n, phrasing, VIOLATION_SHARE):
            emit(phase, r, r.text)
    mixes = _trick_mixes(writer.rng)
    for k, r in enumerate(writer.batch(n // 2, "A", ADVERSARIAL_VIOLATION_SHARE)):
        if r.label:
            text, tricks = _obfuscated(writer, r.text, mixes[k % len(mixes)])
            emit("adversarial", r, text, tricks)
        else:
            emit("adversarial", r, r.text)
    return CascadeWorkload(training, history, stream, truth, key_rows)


def decided_alone(prefilter: Any, n: int) -> list[tuple[bytes, bytes]]:
    """``n`` events of phrasing-A safe reviews the prefilter scores below its threshold (decided
    without the model; texts repeat past 5,000). Raises FatalError when it decides none."""
    texts = [r.text for r in ReviewWriter(29).batch(min(n, 5000), "A", 0.0)]
    keep = [t for t, s in zip(texts, prefilter.scores(texts).tolist(), strict=True) if s < prefilter.threshold]
    if not keep:
        raise FatalError("the bench's prefilter decides none of the safe reviews alone")
    return [(f"s{k}".encode(), orjson.dumps({"event_id": f"s{k}", "kind": "review", "text": keep[k % len(keep)]}))
            for k in range(n)]


def _key_row(text: str, review: Review) -> dict[str, Any]:
    return {"text": text, "label": review.label, "category": review.rule}


def _trick_mixes(rng: random.Random) -> list[tuple[str, ...]]:
    """Every trick alone, every pair and every triple, in a seeded order."""
    from streams.devtools.obfuscate import TRICKS

    names = sorted(TRICKS)
    mixes = [combo for size in (1, 2, 3) for combo in itertools.combinations(names, size)]
    rng.shuffle(mixes)
    return mixes


def _obfuscated(writer: ReviewWriter, text: str, tricks: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    """``text`` rewritten by ``tricks``: a new text on one line (the answer key is JSON lines, read
    with ``str.splitlines``), not written before."""
    from streams.devtools.obfuscate import obfuscate

    for _ in range(20):
        out = obfuscate(text, writer.rng, tricks)
        if out != text and len(out.splitlines()) == 1 and writer.claim(out):
            return out, tricks
    raise RuntimeError(f"obfuscation by {tricks} gives no new one-line text for {text!r}")
