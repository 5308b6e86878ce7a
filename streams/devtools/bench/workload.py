"""The benchmark's events and policy: short reviews, unique texts (no cache hits unless asked)."""

from __future__ import annotations

from pathlib import Path

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
