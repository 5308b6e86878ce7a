from __future__ import annotations

import random

import pytest

from streams.devtools.bench.review_phrases import PRODUCTS
from streams.devtools.bench.reviews import ReviewWriter, compose, templates


def test_same_seed_same_reviews_other_seed_other_reviews() -> None:
    first = ReviewWriter(7).batch(300, "A", 0.3) + ReviewWriter(7).batch(10, "B", 0.5)
    again = ReviewWriter(7).batch(300, "A", 0.3) + ReviewWriter(7).batch(10, "B", 0.5)
    assert first == again
    other = ReviewWriter(8).batch(300, "A", 0.3)
    assert {r.text for r in other} != {r.text for r in first[:300]}


@pytest.mark.parametrize(("phrasing", "share"), [("A", 0.3), ("A", 0.1), ("B", 0.1), ("A", 0.25), ("A", 0.0)])
def test_violation_share_is_exact_and_labels_follow_the_template(phrasing: str, share: float) -> None:
    reviews = ReviewWriter(3).batch(1000, phrasing, share)  # type: ignore[arg-type]
    assert sum(r.label for r in reviews) == round(1000 * share)
    for r in reviews:
        assert r.template.startswith(f"{phrasing}:{'v' if r.label else 's'}")
        assert (r.rule in {"FR1", "FR2", "FR3", "FR4"}) if r.label else r.rule is None
    if share:
        # every rule of the policy is represented among the violations, not one easy pattern
        assert {r.rule for r in reviews if r.label} == {"FR1", "FR2", "FR3", "FR4"}
        assert any(r.label for r in reviews[:500]) and any(r.label for r in reviews[500:])  # shuffled in


def test_phrasings_share_no_template() -> None:
    violations_a, safe_a = templates("A")
    violations_b, safe_b = templates("B")
    assert not {t for _, t in violations_a} & {t for _, t in violations_b}
    assert not set(safe_a) & set(safe_b)
    assert {rule for rule, _ in violations_a} == {rule for rule, _ in violations_b}


def test_texts_are_unique_across_every_batch_of_a_writer() -> None:
    """A training history and a whole stream drawn from one writer: no text twice."""
    w = ReviewWriter(11)
    texts = [r.text for r in w.batch(6000, "A", 0.3) + w.batch(1500, "A", 0.1) + w.batch(1500, "B", 0.1)
             + w.batch(750, "A", 0.25)]
    assert len(set(texts)) == len(texts)
    assert not w.claim(texts[0])
    assert w.claim("a text the writer never wrote")


def test_every_template_fills_for_every_product() -> None:
    rng = random.Random(0)
    for phrasing in ("A", "B"):
        violations, safe = templates(phrasing)  # type: ignore[arg-type]
        for template in [t for _, t in violations] + list(safe):
            for product in PRODUCTS:
                text = compose(template, rng, product)
                assert "{" not in text and "}" not in text, (template, text)


def test_reviews_vary_in_length_and_product() -> None:
    reviews = ReviewWriter(5).batch(2000, "A", 0.3)
    lengths = sorted(len(r.text) for r in reviews)
    assert lengths[0] < 90 and lengths[-1] > 160
    assert sum(1 for p in PRODUCTS if any(p in r.text.lower() for r in reviews)) == len(PRODUCTS)
