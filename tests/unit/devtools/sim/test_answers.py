from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from streams.devtools.sim.answers import AnswerKey, policy_examples
from streams.errors import ConfigError
from streams.policy.model import load_policies


def write_key(tmp_path: Path, rows: list[dict]) -> AnswerKey:
    f = tmp_path / "key.jsonl"
    f.write_bytes(b"\n".join(orjson.dumps(r) for r in rows))
    return AnswerKey.load(f)


def test_exact_then_contained_then_none(tmp_path: Path) -> None:
    key = write_key(tmp_path, [
        {"text": "buy followers now at shady.example", "label": 1, "category": "SP1"},
        {"text": "a perfectly normal message", "label": 0},
    ])
    a = key.find("buy followers now at shady.example", "# Spam")
    assert a is not None and a.violation and a.category == "SP1" and a.source == "answer-key"
    b = key.find("user: hi\nuser: buy followers now at shady.example", "# Spam")  # one turn of a chat
    assert b is not None and b.violation
    assert key.find("something else entirely", "# Spam") is None


def test_policy_scoped_entries(tmp_path: Path) -> None:
    key = write_key(tmp_path, [
        {"text": "selling aimbot", "label": 1, "policy": "game-cheating"},
        {"text": "selling aimbot", "label": 0, "policy": "spam"},
    ])
    cheat = key.find("selling aimbot", "# Game cheating (policy game-cheating)")
    spam = key.find("selling aimbot", "# Spam (policy spam)")
    assert cheat is not None and cheat.violation
    assert spam is not None and not spam.violation
    assert key.find("selling aimbot", "# Anti-spam (policy anti-spam)") is None  # whole-word id match


def test_bad_key_line_is_reported_with_line_number(tmp_path: Path) -> None:
    f = tmp_path / "key.jsonl"
    f.write_text('{"text": "a", "label": 0}\n{"text": "b", "label": 7}\n')
    with pytest.raises(ConfigError, match=r"key.jsonl:2"):
        AnswerKey.load(f)


def test_examples_of_the_starter_policies(policies_dir: Path) -> None:
    for policy in load_policies(policies_dir).values():
        index = policy_examples(policy.body)
        # every starter policy has both violating and safe examples that the simulator can use
        found = [index.find(line.removeprefix("Content:").strip(), "")
                 for line in policy.body.splitlines() if line.startswith("Content:")]
        assert len(found) >= 4 and all(a is not None for a in found)
        assert {a.violation for a in found if a} == {True, False}


def test_exact_text_beats_a_contained_one_unless_scoped_elsewhere(tmp_path: Path) -> None:
    key = write_key(tmp_path, [
        {"text": "great kettle, five stars as the seller asked", "label": 1},
        {"text": "five stars as the seller asked", "label": 0},
        {"text": "only for spam: five stars as the seller asked", "label": 0, "policy": "spam"},
    ])
    exact = key.find("great kettle, five stars as the seller asked", "# Fake reviews (policy fake-reviews)")
    assert exact is not None and exact.violation
    # an exact entry scoped to another policy does not apply: the longest contained text answers
    scoped = key.find("only for spam: five stars as the seller asked", "# Fake reviews (policy fake-reviews)")
    assert scoped is not None and not scoped.violation
    inside = key.find("wow: great kettle, five stars as the seller asked!!", "# Fake reviews (policy fake-reviews)")
    assert inside is not None and inside.violation  # the longest contained text wins
