"""The prefilter's features, scores and files: deterministic, batched, and never a pickle."""

from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from streams.cascade.model import BITS, Prefilter, featurize, load_prefilter
from streams.errors import ConfigError


def model(threshold: float = 0.0) -> Prefilter:
    weights = np.random.default_rng(7).normal(size=2**BITS).astype(np.float32)
    return Prefilter("spam", "1-abcdef01", threshold, weights, -0.5, {"n_train": 10})


def test_features_are_the_same_in_every_process() -> None:
    """The hash is ours, not Python's (which is salted per process)."""
    code = ("from streams.cascade.model import featurize; f = featurize(['Buy cheap pills now', 'hello']); "
            "print(f.bucket[:8].tolist(), f.row.tolist()[-3:])")
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": str(seed)}).stdout for seed in (1, 2)}
    assert len(runs) == 1


def test_a_batch_scores_each_text_as_alone_and_case_does_not_matter() -> None:
    m = model()
    texts = ["Buy cheap pills now", "hello there", "", "ünïcödé ﬁve"]
    together = m.scores(texts)
    alone = np.array([m.scores([t])[0] for t in texts])
    assert np.allclose(together, alone)
    assert np.isclose(m.scores(["BUY CHEAP PILLS NOW"])[0], together[0])
    f = featurize(texts)
    assert set(f.row.tolist()) == {0, 1, 3} and f.texts == 4  # the empty text has only its frame


def test_scores_are_the_log_odds_of_the_features_the_trainer_fits_on() -> None:
    """Scoring skips building the feature lists (prefix sums per n-gram length, in chunks); it must
    give what training saw: ``log_odds(featurize(texts))``, across chunk boundaries and short texts."""
    from streams.cascade.model import CHUNK, log_odds

    m = model()
    rng = np.random.default_rng(3)
    alphabet = list("abc xyz!?é日") + ["  "]
    texts = ["".join(rng.choice(alphabet, size=int(n))) for n in rng.integers(0, 40, size=CHUNK * 2 + 7)]
    texts += ["", "a", "ab", "abc"]
    expected = log_odds(featurize(texts), m.weights, m.bias)
    assert np.allclose(m.scores(texts), expected, rtol=0, atol=1e-9)


def test_a_file_round_trips(tmp_path: Path) -> None:
    m = model(threshold=-1.25)
    path = tmp_path / "spam.prefilter"
    m.save(path)
    back = load_prefilter(path)
    assert (back.policy_id, back.policy_version, back.threshold, back.training) == ("spam", "1-abcdef01", -1.25,
                                                                                    {"n_train": 10})
    assert np.array_equal(back.weights, m.weights) and back.source == str(path)
    assert list(tmp_path.iterdir()) == [path]  # written through a temporary file, renamed


def test_a_pickle_is_refused_never_run(tmp_path: Path) -> None:
    path = tmp_path / "evil.prefilter"
    path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(ConfigError, match="a pickle"):
        load_prefilter(path)


@pytest.mark.parametrize("change,match", [
    (lambda a: a.update(weights=np.zeros(10, dtype=np.float32)), "wrong shape"),
    (lambda a: a.update(weights=np.zeros(2**BITS, dtype=np.float64)), "wrong shape or type"),
    (lambda a: a.update(extra=np.zeros(1)), "unexpected contents"),
    (lambda a: a.update(weights=np.full(2**BITS, np.nan, dtype=np.float32)), "not finite"),
    (lambda a: a.update(meta=_meta(format_version=2)), "format version 2"),
    (lambda a: a.update(meta=_meta(policy_id=None)), "policy_id, policy_version and threshold"),
    (lambda a: a.update(meta=np.frombuffer(b"not json", dtype=np.uint8)), "not JSON"),
])
def test_foreign_or_broken_archives_are_refused_with_the_reason(tmp_path: Path, change, match) -> None:
    arrays = {"weights": np.zeros(2**BITS, dtype=np.float32), "bias": np.array([0.0]), "meta": _meta()}
    change(arrays)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path = tmp_path / "x.prefilter"
    path.write_bytes(buf.getvalue())
    with pytest.raises(ConfigError, match=match):
        load_prefilter(path)


def test_object_arrays_are_not_loaded(tmp_path: Path) -> None:
    buf = io.BytesIO()
    np.savez(buf, weights=np.zeros(2**BITS, dtype=np.float32), bias=np.array([0.0]),
             meta=np.array([{"a": 1}], dtype=object))
    path = tmp_path / "objects.prefilter"
    path.write_bytes(buf.getvalue())
    with pytest.raises(ConfigError, match="not a prefilter archive"):
        load_prefilter(path)


def _meta(**changes: object) -> np.ndarray:
    meta = {"format_version": 1, "policy_id": "spam", "policy_version": "1-x", "threshold": 0.0,
            "features": {"kind": "byte-ngrams", "ngrams": [3, 4, 5], "bits": BITS}, "training": {}}
    meta.update(changes)
    return np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
