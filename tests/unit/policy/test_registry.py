from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from streams.config import Route
from streams.errors import ConfigError
from streams.policy.model import load_policies
from streams.policy.registry import DirectoryWatcher, PolicyRegistry


@pytest.fixture
def pack(tmp_path: Path, policies_dir: Path) -> Path:
    for name in ("spam.md", "fake-reviews.md"):
        shutil.copy(policies_dir / name, tmp_path / name)
    return tmp_path


def registry(directory: Path, changes: list | None = None) -> PolicyRegistry:
    hook = (lambda old, new: changes.append((old and old.version, new and new.version))) if changes is not None \
        else None
    return PolicyRegistry(load_policies(directory), [Route(kind="review", policies=["fake-reviews"])], ["spam"],
                          on_change=hook)


def test_upsert_changes_version_and_routing_sees_it(pack: Path) -> None:
    changes: list = []
    reg = registry(pack, changes)
    before = reg.resolve(topic="t", kind="message", requested=None)[0]
    text = (pack / "spam.md").read_text().replace("bulk commercial content", "bulk commercial content or chain mail")
    reg.apply("spam", text, source="test")
    after = reg.resolve(topic="t", kind="message", requested=None)[0]
    assert before.version != after.version and after.id == "spam"
    assert changes == [(before.version, after.version)]
    assert "chain mail" not in before.body  # the old object is untouched: in-flight work keeps its version


def test_identical_update_is_a_no_op(pack: Path) -> None:
    changes: list = []
    reg = registry(pack, changes)
    reg.apply("spam", (pack / "spam.md").read_text(), source="test")
    assert changes == []


@pytest.mark.parametrize("text,reason", [
    ("no front matter at all", "front matter"),
    ("---\nid: other\n---\n# x\nbody", "does not match"),
])
def test_invalid_update_is_rejected_and_old_version_serves(pack: Path, text: str, reason: str,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    reg = registry(pack)
    old = reg.policies["spam"].version
    reg.apply("spam", text, source="test")
    assert reg.policies["spam"].version == old and reg.rejected == 1
    assert reason in caplog.text and "previous version keeps serving" in caplog.text


def test_delete_of_a_routed_policy_is_rejected(pack: Path) -> None:
    reg = registry(pack)
    with pytest.raises(ConfigError, match="cannot delete"):
        reg.delete("spam", source="test")
    assert "spam" in reg.policies


def test_new_and_deleted_policies(pack: Path, policies_dir: Path) -> None:
    reg = registry(pack)
    reg.apply("game-cheating", (policies_dir / "game-cheating.md").read_text(), source="test")
    assert [p.id for p in reg.resolve(topic="t", kind="chat", requested=["game-cheating"])] == ["game-cheating"]
    reg.apply("game-cheating", None, source="test")
    assert "game-cheating" not in reg.policies


def test_accept_hook_can_veto(pack: Path) -> None:
    reg = PolicyRegistry(load_policies(pack), [], ["spam"], accept=lambda p: "nope" if p.meta.shadow else None)
    shadow = (pack / "spam.md").read_text().replace("version: 1", "version: 2\nshadow: true")
    with pytest.raises(ConfigError, match="nope"):
        reg.upsert(shadow, source="test", expected_id="spam")


def test_directory_watcher_applies_edits_additions_and_removals(pack: Path, policies_dir: Path) -> None:
    reg = registry(pack)
    watcher = DirectoryWatcher(pack, reg, 1.0)
    old = reg.policies["spam"].version
    (pack / "spam.md").write_text((pack / "spam.md").read_text().replace("version: 1", "version: 2"))
    shutil.copy(policies_dir / "game-cheating.md", pack / "game-cheating.md")
    watcher.scan()
    assert reg.policies["spam"].version.startswith("2-") and reg.policies["spam"].version != old
    assert "game-cheating" in reg.policies
    (pack / "game-cheating.md").unlink()
    watcher.scan()
    assert "game-cheating" not in reg.policies
    (pack / "spam.md").write_text("broken")
    watcher.scan()
    assert reg.policies["spam"].version.startswith("2-")  # the broken edit was rejected
