from __future__ import annotations

from pathlib import Path

import pytest

from streams.config import Route
from streams.errors import ConfigError, PoisonError
from streams.policy.model import load_policies
from streams.policy.routing import Router


def test_router_precedence(policies_dir: Path) -> None:
    pols = load_policies(policies_dir)
    router = Router(
        pols,
        [Route(topic="reviews", policies=["fake-reviews"]), Route(kind="chat", policies=["game-cheating"])],
        default=["spam"],
    )

    def ids(**kw: object) -> list[str]:
        return [p.id for p in router.resolve(**kw)]  # type: ignore[arg-type]

    assert ids(topic="reviews", kind="chat", requested=None) == ["fake-reviews"]  # first matching route
    assert ids(topic="x", kind="chat", requested=None) == ["game-cheating"]
    assert ids(topic="x", kind="message", requested=None) == ["spam"]  # default
    assert ids(topic="reviews", kind="review", requested=["spam", "spam", "game-cheating"]) == [
        "spam", "game-cheating"]  # event's own list wins, deduplicated
    with pytest.raises(PoisonError) as exc:
        router.resolve(topic="x", kind="message", requested=["nope"])
    assert exc.value.error_type == "unknown_policy"


def test_router_without_match_is_no_policy(policies_dir: Path) -> None:
    router = Router(load_policies(policies_dir), [], default=[])
    with pytest.raises(PoisonError) as exc:
        router.resolve(topic="x", kind="message", requested=None)
    assert exc.value.error_type == "no_policy"


def test_router_rejects_routes_to_unknown_policies(policies_dir: Path) -> None:
    with pytest.raises(ConfigError, match="unknown policies"):
        Router(load_policies(policies_dir), [Route(policies=["ghost"])], default=[])
