"""The benchmark's events and policy: short reviews, unique texts (no cache hits unless asked)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson

from streams.devtools.demo import load_samples
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


VIOLATION_SHARE = 0.1
TRAIN_SHARE = 0.7  # of the golden set: the rest of its texts are unseen by the prefilter


def golden_items() -> list[Any]:
    from streams.authoring.datasets import load_dataset

    return load_dataset(STARTER_POLICIES / f"{POLICY_ID}.golden.jsonl").items


def cascade_training() -> list[Any]:
    """The golden items the bench's prefilter learns from (a deterministic 70%, split on a salted
    text so the trainer's own hold-out split, on the bare text, cuts across it)."""
    from streams.cascade.train import held_out

    return [i for i in golden_items() if not held_out(f"bench-unseen {i.text}", 1 - TRAIN_SHARE)]


def cascade_stream(n: int, seed: int = 11) -> tuple[list[tuple[bytes, bytes]], dict[str, int]]:
    """``n`` review events, about 10% violating, drawn from the whole golden set (30% of its texts
    unseen in training), each made unique; and the model's answer (the golden label) per event id."""
    rng = random.Random(seed)
    items = golden_items()
    bad = [i for i in items if i.label == 1]
    good = [i for i in items if i.label == 0]
    out, gold = [], {}
    for k in range(n):
        item = rng.choice(bad) if rng.random() < VIOLATION_SHARE else rng.choice(good)
        event_id = f"c{k}"
        out.append((event_id.encode(), orjson.dumps({"event_id": event_id, "kind": "review",
                                                    "text": f"{item.text} (order #{k})"})))
        gold[event_id] = item.label
    return out, gold


def answer_key_rows() -> list[dict[str, Any]]:
    """The simulated model's answers: the golden labels (matched inside each event's text)."""
    return [{"text": i.text, "label": i.label} for i in golden_items()]
