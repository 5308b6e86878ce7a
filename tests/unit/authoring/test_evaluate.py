from __future__ import annotations

from streams.authoring.evaluate import ItemResult, changed_items, score


def test_scores_with_errors_excluded() -> None:
    results = [ItemResult("a", 1, True), ItemResult("b", 1, False), ItemResult("c", 0, True),
               ItemResult("d", 0, False), ItemResult("e", 0, False), ItemResult("f", 1, None, error="boom")]
    s = score(results)
    assert (s.n, s.tp, s.fn, s.fp, s.tn, s.errors) == (6, 1, 1, 1, 2, 1)
    assert s.precision == 0.5 and s.recall == 0.5 and s.f1 == 0.5 and s.accuracy == 0.6


def test_perfect_and_degenerate_scores() -> None:
    assert score([ItemResult("a", 1, True), ItemResult("b", 0, False)]).f1 == 1.0
    s = score([ItemResult("a", 0, False)])
    assert s.precision == 0.0 and s.recall == 0.0 and s.accuracy == 1.0


def test_changed_items() -> None:
    a = [ItemResult("x", 1, True), ItemResult("y", 0, False)]
    b = [ItemResult("x", 1, False), ItemResult("y", 0, False)]
    assert changed_items(a, b) == [{"text": "x", "label": 1, "a": True, "b": False}]
