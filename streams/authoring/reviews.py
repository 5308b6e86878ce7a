"""Moderators' decisions as gold labels: ``eval`` and ``prefilter train`` with ``--from-reviews``.

Review events (``integrations.coop.reviews_topic``, written by ``safeguard coop callbacks`` from
Coop's signed action callbacks) name the item (our event id) and the policies the moderator named.
The content is read back the way the label history is (:mod:`streams.cascade.history`): the event's
source (topic, partition, offset) from its labels on ``kafka.labels_topic``, then the record itself,
rendered as the model reads it. A Coop policy the moderator named is ours through
``integrations.coop.policy_map`` (Coop policy id or name -> our policy id), else when its id or name
equals our policy id (ignoring case, spaces and underscores). Gold label for a policy: 1 when the
moderator named it; 0 when they named none, or named only other policies of ours; unknown (skipped
when scored, never a 0) when they named policies none of which is ours, since then nobody said
whether ours applies. The newest review of an event wins. Reviews whose content is gone (retention)
or that have no label (not an event of ours) are counted and skipped.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from streams.authoring.datasets import Dataset, Item
from streams.cascade.history import read_offsets, values
from streams.config import Settings
from streams.errors import ConfigError, PoisonError, RetryableError
from streams.inference.prompt import render_content
from streams.wire.codec import Decoder, record_reader

log = logging.getLogger(__name__)

_NORMAL = re.compile(r"[\s_]+")


def _norm(name: str) -> str:
    return _NORMAL.sub("-", name.strip().lower())


def dataset_from_reviews(settings: Settings, policy_ids: list[str], *, timeout_s: float = 120.0) -> Dataset:
    """A dataset of reviewed events with a gold label per policy in ``policy_ids``."""
    topic = settings.integrations.coop.reviews_topic
    decode = record_reader(settings, topic, "review")
    reviews: dict[str, dict[str, Any]] = {}
    unreadable = 0
    for value in values(settings, topic, timeout_s):
        try:
            doc = decode(value)
            event_id = doc["event_id"]
        except Exception:  # noqa: BLE001 - not a review event: counted, never a gold label
            unreadable += 1
            continue
        old = reviews.get(event_id)
        if old is None or str(doc.get("decided_at") or "") >= str(old.get("decided_at") or ""):
            reviews[event_id] = doc
    sources = _sources(settings, set(reviews), timeout_s)
    wanted: dict[tuple[str, int], dict[int, str]] = {}
    for event_id, (src_topic, partition, offset) in sources.items():
        wanted.setdefault((src_topic, partition), {})[offset] = event_id
    decoder = Decoder(settings.input, settings.schema_registry)
    data = Dataset(Path(topic), "reviews")
    coop = settings.integrations.coop
    ours = {_norm(p): p for p in [*policy_ids, *coop.policy_map.values(), *_policy_dir_ids(settings)]}
    mapped = {_norm(k): v for k, v in coop.policy_map.items()}
    missing = unmapped = 0
    for (src_topic, partition), offsets in wanted.items():
        found = read_offsets(settings, src_topic, partition, sorted(offsets), timeout_s)
        missing += len(offsets) - len(found)
        for offset, raw in found.items():
            event_id = offsets[offset]
            try:
                text = render_content(decoder.decode(raw, src_topic))
            except (PoisonError, RetryableError):
                missing += 1
                continue
            review = reviews[event_id]
            policies = review.get("policies") or []
            named = {_resolve(p, mapped, ours) for p in policies} - {None}
            if policies and not named:
                unmapped += 1  # only policies we do not know: says nothing about ours
                labels: dict[str | None, int] = {}
            else:
                labels = {pid: int(pid in named) for pid in policy_ids}
            data.items.append(Item(text, labels, None, f"review {review.get('review_id')} of {event_id}"))
            data.unlabelled += not labels
    no_label = len(reviews) - len(sources)
    log.info("reviews read topic=%s reviews=%d items=%d unmapped=%d no_label=%d content_missing=%d unreadable=%d",
             topic, len(reviews), len(data.items), unmapped, no_label, missing, unreadable)
    if unmapped:
        log.warning("%d reviews name only Coop policies that are none of ours (%s): left unlabelled; map them with "
                    "integrations.coop.policy_map", unmapped, ", ".join(policy_ids))
    if data.unlabelled == len(data.items):
        raise ConfigError(f"no reviewed events to score from {topic}: {len(reviews)} reviews, {no_label} of events "
                          f"without labels on {settings.kafka.labels_topic}, {missing} whose content is gone, "
                          f"{unmapped} naming only Coop policies that are not ours (integrations.coop.policy_map)")
    return data


def _policy_dir_ids(settings: Settings) -> list[str]:
    """The ids of the policies in ``policies.dir`` (when it is there): a review naming one of them names
    a policy of ours."""
    from streams.policy.model import load_policies

    try:
        return list(load_policies(settings.policies.dir))
    except ConfigError:
        return []


def _resolve(policy: dict[str, Any], mapped: dict[str, str], ours: dict[str, str]) -> str | None:
    """Our policy id for a Coop policy the moderator named, or None."""
    for key in ("id", "name"):
        value = _norm(str(policy.get(key) or ""))
        if value in mapped:
            return mapped[value]
    for key in ("id", "name"):
        value = _norm(str(policy.get(key) or ""))
        if value in ours:
            return ours[value]
    return None


def _sources(settings: Settings, event_ids: set[str], timeout_s: float) -> dict[str, tuple[str, int, int]]:
    """event id -> where the event was read (from its first label)."""
    topic = settings.kafka.labels_topic
    decode = record_reader(settings, topic, "label")
    out: dict[str, tuple[str, int, int]] = {}
    for value in values(settings, topic, timeout_s):
        try:
            doc = decode(value)
        except Exception:  # noqa: BLE001, S112 - not a label
            continue
        event_id = doc.get("event_id")
        if event_id in event_ids and event_id not in out:
            src = doc["source"]
            out[event_id] = (src["topic"], int(src["partition"]), int(src["offset"]))
    return out
