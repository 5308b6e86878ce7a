"""Product reviews for the fake-reviews policy, composed from the phrase banks of
:mod:`streams.devtools.bench.review_phrases`: deterministic from a seed, no network, no data files.

A review's label comes from its composition: a violation template (undisclosed incentives,
templated praise, competitor attacks, review-for-hire and review swaps: rules FR1-FR4 of
``policies/fake-reviews.md``) gives 1, an honest-review template 0. Phrasing ``A`` is the traffic
a prefilter learns from; phrasing ``B`` says the same things in words ``A`` never uses (no
violation template is shared). One :class:`ReviewWriter` never writes the same text twice, so
texts drawn for training, for each phase of a stream and for an answer key stay distinct.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Literal

from streams.devtools.bench.review_phrases import (
    OPENERS,
    PRODUCTS,
    SAFE_A,
    SAFE_B,
    SLOTS,
    VIOLATIONS_A,
    VIOLATIONS_B,
)

Phrasing = Literal["A", "B"]

_SLOT = re.compile(r"\{([A-Za-z_]+?)(\d*)\}")
_ATTEMPTS = 500  # draws before a writer gives up on finding an unused text
_INFORMAL = 0.06  # share of reviews typed all in lower case, final full stop dropped


@dataclass(frozen=True)
class Review:
    text: str
    label: int  # 1: the fake-reviews policy is broken (a violation template), 0: safe
    rule: str | None  # FR1-FR4 for a violation
    template: str  # which template composed it: "A:v3", "B:s0", ...


def templates(phrasing: Phrasing) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    """(violation templates as (rule, template), safe templates) of one phrasing."""
    return (VIOLATIONS_A, SAFE_A) if phrasing == "A" else (VIOLATIONS_B, SAFE_B)


class ReviewWriter:
    """Writes reviews from one seeded random stream; never the same text twice (see :meth:`claim`)."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self._seen: set[str] = set()
        self._products = sorted(PRODUCTS)

    @property
    def rng(self) -> random.Random:
        """The writer's random stream, for callers deriving texts of their own from its reviews."""
        return self._rng

    def claim(self, text: str) -> bool:
        """Reserve ``text`` (e.g. a review rewritten by the caller); False when already written."""
        if text in self._seen:
            return False
        self._seen.add(text)
        return True

    def review(self, phrasing: Phrasing, *, violation: bool) -> Review:
        """One review not written before by this writer. Raises RuntimeError when the banks run out."""
        violations, safe = templates(phrasing)
        for _ in range(_ATTEMPTS):
            if violation:
                index = self._rng.randrange(len(violations))
                rule, template = violations[index]
            else:
                index, rule = self._rng.randrange(len(safe)), None
                template = safe[index]
            text = compose(template, self._rng, self._rng.choice(self._products))
            if rule != "FR4":  # adverts and solicitations do not open like a customer's review
                text = self._rng.choice(OPENERS[phrasing]) + text
            if self._rng.random() < _INFORMAL:
                text = text.lower().removesuffix(".")
            if self.claim(text):
                return Review(text, int(violation), rule, f"{phrasing}:{'v' if violation else 's'}{index}")
        raise RuntimeError(f"the phrase banks ran out of unused {phrasing} reviews after {len(self._seen)} texts")

    def batch(self, n: int, phrasing: Phrasing, violation_share: float) -> list[Review]:
        """``n`` reviews, ``round(n * violation_share)`` of them violations, in a shuffled order."""
        flags = [True] * round(n * violation_share) + [False] * (n - round(n * violation_share))
        self._rng.shuffle(flags)
        return [self.review(phrasing, violation=flag) for flag in flags]


def compose(template: str, rng: random.Random, product: str) -> str:
    """Fill a template's slots for ``product`` (the slot rules are in :mod:`review_phrases`)."""
    pos, neg = PRODUCTS[product]
    banks = {**SLOTS, "pos": pos, "neg": neg, "product": (product,)}
    chosen: dict[str, str] = {}
    used: dict[str, set[str]] = {}

    def fill(match: re.Match[str]) -> str:
        name, digits = match.group(1), match.group(2)
        bank = name[0].lower() + name[1:]
        key = bank + digits
        if key not in chosen:
            taken = used.setdefault(bank, set())
            options = [o for o in banks[bank] if o not in taken] or list(banks[bank])
            chosen[key] = rng.choice(options)
            taken.add(chosen[key])
        value = chosen[key]
        return value[:1].upper() + value[1:] if name[0].isupper() else value

    text = template
    for _ in range(3):  # drawn entries may hold slots of their own ({mins} inside a product detail)
        text, filled = _SLOT.subn(fill, text)
        if not filled:
            break
    return text
