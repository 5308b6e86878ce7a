"""The live set of prefilters: the stamp decides, stale and broken files are left out with a reason."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from streams.cascade.model import BITS, Prefilter
from streams.cascade.registry import Prefilters
from streams.ops.metrics import build_metrics
from streams.policy.model import parse_policy

SPAM = parse_policy("---\nid: spam\n---\nthe spam policy\n")
SPAM_EDITED = parse_policy("---\nid: spam\n---\nthe spam policy, edited\n")


def write(path: Path, version: str, threshold: float = 0.0) -> None:
    Prefilter("spam", version, threshold, np.zeros(2**BITS, dtype=np.float32), 0.0).save(path)


def test_only_the_version_it_was_trained_for_is_served_and_a_stale_one_is_logged_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write(tmp_path / "spam.prefilter", SPAM.version)
    metrics = build_metrics()
    set_ = Prefilters(tmp_path, metrics)
    set_.scan()
    current = set_.current(SPAM)
    assert current is not None and current.policy_version == SPAM.version
    assert metrics.registry.get_sample_value("safeguard_prefilter_info",
                                             {"policy": "spam", "version": SPAM.version}) == 1
    caplog.set_level(logging.WARNING)
    assert set_.current(SPAM_EDITED) is None and set_.current(SPAM_EDITED) is None  # the policy was edited
    assert caplog.text.count("trained for another policy version") == 1


def test_broken_files_are_rejected_with_a_reason_and_the_rest_load(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    write(tmp_path / "spam.prefilter", SPAM.version)
    (tmp_path / "broken.prefilter").write_bytes(b"PK\x03\x04 truncated")
    caplog.set_level(logging.ERROR)
    set_ = Prefilters(tmp_path)
    set_.scan()
    assert "prefilter rejected" in caplog.text and "broken.prefilter" in caplog.text
    assert set_.current(SPAM) is not None
    set_.scan()  # unchanged files are not read (nor logged) again
    assert caplog.text.count("prefilter rejected") == 1


def test_changed_added_and_removed_files_are_picked_up(tmp_path: Path) -> None:
    set_ = Prefilters(tmp_path)
    set_.scan()
    assert set_.current(SPAM) is None
    path = tmp_path / "spam.prefilter"
    write(path, SPAM_EDITED.version, threshold=-2.0)
    set_.scan()
    assert set_.current(SPAM) is None and set_.current(SPAM_EDITED) is not None
    write(path, SPAM.version, threshold=-3.0)
    os.utime(path, ns=(1, 10**19))  # a new stamp even on a coarse clock
    set_.scan()
    current = set_.current(SPAM)
    assert current is not None and current.threshold == -3.0
    path.unlink()
    set_.scan()
    assert set_.current(SPAM) is None and set_.loaded() == []


def test_a_prefilter_dir_that_does_not_exist_stops_the_start(tmp_path: Path) -> None:
    """A typo must not quietly send every pair to the GPUs."""
    from streams.app import load_prefilters
    from streams.config import Settings
    from streams.errors import ConfigError

    settings = Settings.model_validate({"prefilter": {"dir": str(tmp_path / "missing")}})
    with pytest.raises(ConfigError, match="is not a directory"):
        load_prefilters(settings, build_metrics())
    empty = Settings.model_validate({"prefilter": {"dir": str(tmp_path)}})
    loaded = load_prefilters(empty, build_metrics())
    assert loaded is not None and loaded.loaded() == []
    assert load_prefilters(Settings(), build_metrics()) is None
