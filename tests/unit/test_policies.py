from __future__ import annotations

from pathlib import Path

import pytest

from streams.config import Route
from streams.errors import ConfigError, PoisonError
from streams.policies import Router, load_policies, load_policy, parse_policy

POLICY = """---
id: demo
version: 3
kinds: [review]
output: binary
---
# Demo (policy demo)
Return exactly one character: 0 or 1.
"""


def test_parse_and_version_string() -> None:
    p = parse_policy(POLICY)
    assert p.id == "demo" and p.meta.output == "binary"
    assert p.version.startswith("3-") and len(p.version) == 2 + 8
    assert p.body.startswith("# Demo")


def test_editing_text_changes_version_even_without_bump() -> None:
    a = parse_policy(POLICY)
    b = parse_policy(POLICY.replace("0 or 1", "0 or 1 only"))
    assert a.meta.version == b.meta.version and a.version != b.version


@pytest.mark.parametrize(
    "text,match",
    [
        ("# no front matter", "front matter"),
        ("---\nid: x\nbogus: 1\n---\nbody", "unknown key"),
        ("---\nid: Bad Id\n---\nbody", "lowercase"),
        ("---\nid: x\n---\n   \n", "empty"),
        ("---\nid: x\noutput: xml\n---\nbody", "output"),
        ("---\n: [\n---\nbody", "YAML"),
    ],
)
def test_bad_policies_are_explained(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_policy(text)


def test_file_name_must_match_id(tmp_path: Path) -> None:
    f = tmp_path / "other.md"
    f.write_text(POLICY)
    with pytest.raises(ConfigError, match="<id>.md"):
        load_policy(f)


def test_starter_pack_loads(policies_dir: Path) -> None:
    pols = load_policies(policies_dir)
    assert {"fake-reviews", "game-cheating", "spam"} <= set(pols)
    for p in pols.values():
        assert "## INSTRUCTIONS" in p.body and "## EXAMPLES" in p.body
        assert f"(policy {p.id})" in p.body.splitlines()[0]


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
