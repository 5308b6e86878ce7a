"""Osprey out on the real broker: every label and decision also appears on Osprey's input topic as an
action Osprey's Kafka input stream reads (tests/osprey_input.py: its parser, from its source), with
the same document, under the labels' delivery guarantee."""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
import pytest

from streams.app import run_consumer
from streams.config import load_settings
from streams.devtools.broker import create_topics
from streams.integrations.osprey import action_id
from tests.integration.helpers import read_to_end
from tests.integration.interventions.test_decisions import setup
from tests.osprey_input import json_path, parse_action


@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
async def test_labels_and_decisions_appear_as_valid_osprey_actions(delivery, kafka_bootstrap, topics, sims,
                                                                    answer_key, tmp_path) -> None:
    n = 40
    osprey = f"osprey-{tmp_path.name}"
    create_topics(kafka_bootstrap, {osprey: 3})
    extra: dict[str, Any] = {"delivery": delivery,
                             "integrations": {"osprey": {"topic": osprey, "source": "both",
                                                         "action_name": "safeguard"}}}
    if delivery == "exactly_once":
        extra["kafka"] = {"transactional_id": f"tx-{tmp_path.name}"}
    names, path = setup(tmp_path, kafka_bootstrap, topics, sims, answer_key, n, **extra)
    await run_consumer(load_settings(path), until_idle=3.0)
    isolation = "read_committed" if delivery == "exactly_once" else "read_uncommitted"
    labels = {orjson.loads(m.value())["label_id"]: (m.key(), orjson.loads(m.value()))
              for m in read_to_end(kafka_bootstrap, names["labels"], isolation=isolation)}
    decisions = {orjson.loads(m.value())["decision_id"]: (m.key(), orjson.loads(m.value()))
                 for m in read_to_end(kafka_bootstrap, names["decisions"], isolation=isolation)}
    actions = [(m.key(), parse_action(m.value())) for m in read_to_end(kafka_bootstrap, osprey, isolation=isolation)]
    assert len(decisions) == n and len(labels) > n
    counts = Counter(a.action_id for _, a in actions)
    assert max(counts.values()) == 1  # a clean run: one action per record
    by_id = {a.action_id: (key, a) for key, a in actions}
    expected = {action_id(i): v for i, v in (labels | decisions).items()}
    assert set(by_id) == set(expected)  # every label and decision, nothing else
    for aid, (key, action) in by_id.items():
        record_key, doc = expected[aid]
        assert action.action_name == "safeguard" and key == record_key  # keyed like the event
        assert action.data == doc
        # what the docs' SML rules read: the actor from the event's metadata, the verdict or action
        assert json_path(action.data, "$.metadata.author_id") is not None
        assert (json_path(action.data, "$.violation") is not None) or (json_path(action.data, "$.action")
                                                                          is not None)
