from __future__ import annotations

from pathlib import Path

import pytest

from streams.errors import ConfigError
from streams.policy.model import STARTER_POLICIES, load_policies, load_policy, parse_policy

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


def test_the_package_carries_the_starter_pack(policies_dir: Path) -> None:
    """An installed wheel has no checkout: the package's starter pack is the top-level policies/."""
    shipped = sorted(p.name for p in STARTER_POLICIES.iterdir())
    assert shipped == sorted(p.name for p in policies_dir.iterdir())
    assert set(load_policies(STARTER_POLICIES)) == set(load_policies(policies_dir))
