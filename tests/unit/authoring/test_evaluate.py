from __future__ import annotations

from streams.authoring.datasets import Item
from streams.authoring.evaluate import Evaluation, ItemResult, changed_items, score
from streams.policy.model import parse_policy


def r(text: str, label: int, violation: bool | None, *, index: int = 0, policy: str = "p",
      error: str | None = None) -> ItemResult:
    return ItemResult(index, policy, text, label, violation, error=error)


def test_scores_with_errors_excluded() -> None:
    results = [r("a", 1, True), r("b", 1, False), r("c", 0, True),
               r("d", 0, False), r("e", 0, False), r("f", 1, None, error="boom")]
    s = score(results)
    assert (s.n, s.tp, s.fn, s.fp, s.tn, s.errors) == (6, 1, 1, 1, 2, 1)
    assert s.precision == 0.5 and s.recall == 0.5 and s.f1 == 0.5 and s.accuracy == 0.6


def test_perfect_and_degenerate_scores() -> None:
    assert score([r("a", 1, True), r("b", 0, False)]).f1 == 1.0
    s = score([r("a", 0, False)])
    assert s.precision == 0.0 and s.recall == 0.0 and s.accuracy == 1.0


def test_changed_items() -> None:
    a = [r("x", 1, True, index=0), r("y", 0, False, index=1)]
    b = [r("x", 1, False, index=0), r("y", 0, False, index=1)]
    assert changed_items(a, b) == [{"text": "x", "label": 1, "a": True, "b": False}]


def test_multi_policy_accuracy_counts_an_item_only_when_every_policy_is_right() -> None:
    a, b = (parse_policy(f"---\nid: {pid}\n---\nbody\n") for pid in ("a", "b"))
    run = Evaluation([a, b], skipped={"a": 0, "b": 1})
    run.results = [
        r("x", 1, True, index=0, policy="a"), r("x", 0, False, index=0, policy="b"),  # both right
        r("y", 1, True, index=1, policy="a"), r("y", 1, False, index=1, policy="b"),  # one wrong
        r("z", 0, False, index=2, policy="a"), r("z", 1, None, index=2, policy="b", error="x"),  # an error
        r("w", 0, False, index=3, policy="a"),  # no gold label for b: skipped there
    ]
    doc = run.report()
    assert doc["multi_policy_accuracy"] == 0.5 and doc["multi_policy_items"] == 2
    assert (doc["n"], doc["tp"], doc["fn"], doc["errors"], doc["skipped"]) == (7, 2, 1, 1, 1)
    assert doc["per_policy"]["b"]["skipped"] == 1 and doc["per_policy"]["a"]["tp"] == 2


def test_an_item_label_for_a_policy() -> None:
    item = Item("t", {"spam": 1, None: 0})
    assert (item.label_for("spam"), item.label_for("other")) == (1, 0)
    assert Item("t", {"spam": 0}).label_for("other") is None
