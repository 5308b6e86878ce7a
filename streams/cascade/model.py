"""The prefilter: a small linear model over hashed character n-grams that scores a whole poll batch
of texts at once, on the CPU, in a few microseconds per text.

Features: the text is normalised (:mod:`streams.cascade.normalise`: NFKC, case-folded, invisible
characters removed, look-alike letters mapped to their Latin skeleton, spaced-out letters joined),
encoded as UTF-8 and framed by spaces; every byte 3-, 4- and 5-gram is hashed (a polynomial hash over the bytes, then a
multiplicative mix, in 32-bit unsigned arithmetic, so the same text gives the same features on
every machine and in every process) into ``2**bits`` buckets. A text's feature vector counts its
n-grams per bucket, scaled by one over the square root of its n-gram count. The score is a
logistic regression's log-odds of a violation: ``bias + weights . features``. The whole batch is
hashed and scored with a few numpy operations over one concatenated byte array, which is what
makes it cheap: per-call overhead is paid once per poll batch, not once per text.

Files (``<name>.prefilter``) are numpy ``.npz`` archives holding two numeric arrays (``weights``,
``bias``) and one UTF-8 JSON document (``meta``: format version, policy id and version, threshold,
features, training figures). They are loaded with ``allow_pickle=False``: a pickle, or an archive
holding objects, is refused, never executed. These files travel between machines.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from streams.cascade.normalise import skeleton
from streams.errors import ConfigError

FORMAT_VERSION = 1
SUFFIX = ".prefilter"
NGRAMS = (3, 4, 5)
BITS = 18
CHUNK = 128  # texts scored per pass (see Prefilter.scores)
_BASE = np.uint32(16777619)  # FNV's 32-bit prime, as the polynomial base
_MIX = np.uint32(2654435769)  # Fibonacci hashing (2**32 / golden ratio)
_SALT = np.uint32(0x9E3779B9)


@dataclass(frozen=True)
class Features:
    """The hashed n-grams of a batch: ``bucket[i]`` belongs to text ``row[i]``; ``scale[t]`` is
    text ``t``'s 1/sqrt(n-gram count)."""

    bucket: npt.NDArray[np.intp]
    row: npt.NDArray[np.intp]
    scale: npt.NDArray[np.float64]
    texts: int


NORMALISER = "skeleton-1"  # stamped in the file: the text preparation its weights were trained on


def _encode(normalised: str) -> bytes:
    """A normalised text framed by spaces, as the n-grams see it."""
    return b" " + normalised.encode("utf-8", "surrogatepass") + b" "


def _prepare(text: str) -> bytes:
    return _encode(skeleton(text))


def featurize(texts: list[str], bits: int = BITS, ngrams: tuple[int, ...] = NGRAMS) -> Features:
    """Hash every text's byte n-grams (see the module doc), batched: one pass of vector operations
    over the whole batch joined by NUL bytes, n-grams that would cross a NUL dropped."""
    encoded = [_prepare(t) for t in texts]
    joined = b"\x00".join(encoded)
    data = np.frombuffer(joined, dtype=np.uint8)
    lengths = np.fromiter((len(e) + 1 for e in encoded), dtype=np.intp, count=len(encoded))
    text_of = np.repeat(np.arange(len(encoded), dtype=np.intp), lengths)[: len(data)]
    nul = np.concatenate(([0], np.cumsum(data == 0, dtype=np.int32)))
    d = data.astype(np.uint32)
    shift = np.uint32(32 - bits)
    buckets, rows = [], []
    h = d
    with np.errstate(over="ignore"):
        for n in range(2, max(ngrams) + 1):
            h = h[:-1] * _BASE + d[n - 1:]  # the n-gram hash at every start, from the (n-1)-gram's
            if n not in ngrams:
                continue
            count = len(h)
            valid = nul[n: n + count] == nul[:count]
            mixed = ((h[valid] ^ (_SALT * np.uint32(n))) * _MIX) >> shift
            buckets.append(mixed.astype(np.intp))
            rows.append(text_of[:count][valid])
    bucket = np.concatenate(buckets) if buckets else np.zeros(0, dtype=np.intp)
    row = np.concatenate(rows) if rows else np.zeros(0, dtype=np.intp)
    counts = np.bincount(row, minlength=len(texts)).astype(np.float64)
    scale = 1.0 / np.sqrt(np.maximum(counts, 1.0))
    return Features(bucket, row, scale, len(texts))


def log_odds(features: Features, weights: npt.NDArray[np.float32], bias: float) -> npt.NDArray[np.float64]:
    """Each text's score: bias + weights . features."""
    sums = np.bincount(features.row, weights=weights[features.bucket], minlength=features.texts)
    return bias + sums * features.scale


@dataclass
class Prefilter:
    """A trained prefilter for one policy version."""

    policy_id: str
    policy_version: str
    threshold: float  # in log-odds: a score below it is decided "no violation" without the model
    weights: npt.NDArray[np.float32]
    bias: float
    training: dict[str, Any] = field(default_factory=dict)  # figures of the run that made it
    bits: int = BITS
    ngrams: tuple[int, ...] = NGRAMS
    source: str = ""  # the file it came from

    def scores(self, texts: list[str]) -> npt.NDArray[np.float64]:
        """Log-odds of a violation for each raw text (normalised here)."""
        return self.score_normalised([skeleton(t) for t in texts])[0]

    def score_normalised(self, texts: list[str], *, coverage: bool = False) -> tuple[
            npt.NDArray[np.float64], npt.NDArray[np.float64] | None]:
        """Log-odds of a violation for each already normalised text: ``log_odds(featurize(texts))``,
        computed without building the feature lists; with ``coverage``, also each text's share of
        n-grams whose bucket has a trained (nonzero) weight, the drift signal. Per n-gram length,
        the weights of the n-grams at every start position of the joined batch are gathered and
        prefix-summed once; a text's sum is the difference of that prefix sum between its first
        start and its last whole n-gram. Texts go in chunks of ``CHUNK``, whose intermediate arrays
        stay in the CPU's cache."""
        out = np.empty(len(texts))
        known = np.empty(len(texts)) if coverage else None
        for lo in range(0, len(texts), CHUNK):
            out[lo: lo + CHUNK] = self._chunk_scores(texts[lo: lo + CHUNK], known, lo)
        return out, known

    def _chunk_scores(self, texts: list[str], known: npt.NDArray[np.float64] | None = None,
                      offset: int = 0) -> npt.NDArray[np.float64]:
        encoded = [_encode(t) for t in texts]
        d = np.frombuffer(b"\x00".join(encoded), dtype=np.uint8).astype(np.uint32)
        lengths = np.fromiter(map(len, encoded), dtype=np.intp, count=len(encoded))
        starts = np.zeros(len(encoded), dtype=np.intp)
        np.cumsum(lengths[:-1] + 1, out=starts[1:])
        ends = starts + lengths
        sums = np.zeros(len(encoded))
        grams = np.zeros(len(encoded), dtype=np.intp)
        shift = np.uint32(32 - self.bits)
        prefix = np.zeros(len(d) + 1)
        seen = np.zeros(len(encoded)) if known is not None else None
        seen_prefix = np.zeros(len(d) + 1, dtype=np.int64) if known is not None else None
        h = d
        with np.errstate(over="ignore"):
            for n in range(2, max(self.ngrams) + 1):
                h = h[:-1] * _BASE + d[n - 1:]
                if n not in self.ngrams:
                    continue
                gathered = self.weights[((h ^ (_SALT * np.uint32(n))) * _MIX) >> shift]
                np.cumsum(gathered, dtype=np.float64, out=prefix[1: len(h) + 1])
                stop = np.maximum(ends - n + 1, starts)  # one past the last n-gram wholly inside the text
                sums += prefix[stop] - prefix[starts]
                grams += stop - starts
                if seen is not None and seen_prefix is not None:
                    np.cumsum(gathered != 0, out=seen_prefix[1: len(h) + 1])
                    seen += seen_prefix[stop] - seen_prefix[starts]
        if known is not None and seen is not None:
            known[offset: offset + len(encoded)] = seen / np.maximum(grams, 1)
        return self.bias + sums / np.sqrt(np.maximum(grams, 1))

    def meta(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, "policy_id": self.policy_id, "policy_version": self.policy_version,
                "threshold": self.threshold, "features": {"kind": "byte-ngrams", "ngrams": list(self.ngrams),
                                                          "bits": self.bits, "normaliser": NORMALISER},
                "training": self.training}

    def save(self, path: Path) -> None:
        buf = io.BytesIO()
        np.savez_compressed(buf, weights=self.weights.astype(np.float32), bias=np.array([self.bias]),
                            meta=np.frombuffer(json.dumps(self.meta()).encode("utf-8"), dtype=np.uint8))
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(buf.getvalue())
        tmp.replace(path)  # a watcher never sees half a file


def load_prefilter(path: Path) -> Prefilter:
    """Read a ``.prefilter`` file. Raises ConfigError with the reason for anything else: a pickle, a
    foreign archive, a newer format, arrays of the wrong shape or type."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    if not raw.startswith(b"PK"):
        kind = "a pickle" if raw[:1] == b"\x80" else "not a prefilter archive"
        raise ConfigError(f"{path}: {kind} (refused: prefilters are .npz archives of plain arrays)")
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            names = set(npz.files)
            if names != {"weights", "bias", "meta"}:
                raise ConfigError(f"{path}: unexpected contents {sorted(names)}")
            weights, bias, meta_bytes = npz["weights"], npz["bias"], npz["meta"]
    except (ValueError, OSError, zipfile.BadZipFile, KeyError) as exc:
        raise ConfigError(f"{path}: not a prefilter archive ({exc})") from exc
    try:
        meta = json.loads(meta_bytes.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: its meta document is not JSON ({exc})") from exc
    return _checked(path, meta, weights, bias)


def _checked(path: Path, meta: Any, weights: Any, bias: Any) -> Prefilter:
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        found = meta.get("format_version") if isinstance(meta, dict) else None
        raise ConfigError(f"{path}: format version {found!r}; this consumer reads {FORMAT_VERSION}")
    features = meta.get("features") or {}
    bits, ngrams = features.get("bits"), features.get("ngrams")
    good_ngrams = isinstance(ngrams, list) and ngrams and all(isinstance(n, int) and 2 <= n <= 8 for n in ngrams)
    # A file from before the normaliser (no "normaliser") learned NFKC-folded text: the skeleton is the
    # same for plain text, so it still scores; one from a newer normaliser would not.
    known_normaliser = features.get("normaliser") in (None, NORMALISER)
    if features.get("kind") != "byte-ngrams" or not isinstance(bits, int) or not 8 <= bits <= 24 or not good_ngrams \
            or not known_normaliser:
        raise ConfigError(f"{path}: unknown features {features!r}")
    if weights.dtype != np.float32 or weights.shape != (2**bits,) or bias.shape != (1,) or \
            not np.issubdtype(bias.dtype, np.floating):
        raise ConfigError(f"{path}: weights or bias of the wrong shape or type")
    if not (np.all(np.isfinite(weights)) and math.isfinite(float(bias[0]))):
        raise ConfigError(f"{path}: weights are not finite numbers")
    policy_id, version, threshold = meta.get("policy_id"), meta.get("policy_version"), meta.get("threshold")
    if not isinstance(policy_id, str) or not isinstance(version, str) or not isinstance(threshold, int | float):
        raise ConfigError(f"{path}: the stamp needs policy_id, policy_version and threshold")
    assert isinstance(ngrams, list)
    return Prefilter(policy_id, version, float(threshold), weights, float(bias[0]), meta.get("training") or {},
                     bits, tuple(ngrams), str(path))
