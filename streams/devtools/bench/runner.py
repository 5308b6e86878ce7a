"""Runs every benchmark mode against the same broker, replica profile, time scale and events. Each
mode gets simulated replicas of its own, started cold, so none inherits another's prefix cache (the
simulator's answers and reasoning lengths depend only on the request, so every mode does the same work).

- ``ideal``: the replicas' capacity over HTTP, no Kafka (:mod:`streams.devtools.bench.ideal`).
- ``pipeline``: our consumer end to end (Kafka in -> labels acknowledged) in its own process:
  events/s, p50/p99 event latency (consumed -> labelled, from the labels; ``e2e_*``: from the input
  record's timestamp to the label's, waiting in Kafka included, the events produced in one burst
  once the consumer runs), utilisation
  (pipeline / ideal events/s), consumer CPU microseconds per event (that process only), and the
  replicas' prefix-cache hit rate over the run (from their ``/metrics``, in prompt tokens).
- ``naive``: poll -> one blocking HTTP call -> produce -> commit (:mod:`streams.devtools.bench.naive`).
- ``faust``: an idiomatic faust-streaming agent (:mod:`streams.devtools.bench.faust_app`).
- ``passthrough``: our consumer when every label comes from the dedupe cache (no model: one
  unmeasured event warms the cache first), against a raw confluent-kafka consume -> produce loop,
  the physical floor on this machine.
- ``cascade``: our consumer with a prefilter (trained on generated review history and the golden
  set) in front of the model, over one stream of three phases (steady, shifted phrasing,
  obfuscated violations), once with the live controller and once without: per phase, model
  requests per event and recall against the simulated model's answers; events/s; then a
  prefilter-only stream for the CPU per prefilter-decided event beside the raw loop
  (:meth:`_Bench.cascade`, :mod:`streams.devtools.bench.phases`).

``modes`` runs a subset (in this order); ``ratios`` holds only the ratios whose modes ran.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import orjson
import yaml
from confluent_kafka import Producer

from streams.devtools.bench import workload
from streams.devtools.bench.ideal import percentile, saturate, steady_rate
from streams.devtools.bench.phases import figures, headline
from streams.devtools.bench.probes import prefix_cache_tokens, proc_cpu, read_line
from streams.devtools.bench.ratios import per_event, ratio, ratios
from streams.devtools.broker import create_topics, local_broker, reader_from_beginning
from streams.devtools.sim.launcher import SimProcesses
from streams.errors import FatalError
from streams.kafka.logs import LIBRDKAFKA_LOG
from streams.ops.profiles import PROFILES

MODES = ("ideal", "pipeline", "naive", "faust", "passthrough", "cascade")


def run_bench(*, quick: bool, time_scale: float = 10.0, profile: str = "gpt-oss-safeguard-20b@h100",
              replicas: int = 1, progress: Any = print, modes: Collection[str] = MODES,
              broker_kind: str = "embedded") -> dict[str, Any]:
    prof = PROFILES[profile]
    n = 1500 if quick else 6000
    n_pass = 10_000 if quick else 40_000
    naive_s = 10.0 if quick else 30.0
    run = [m for m in MODES if m in modes]
    out: dict[str, Any] = {"config": {"quick": quick, "profile": profile, "time_scale": time_scale,
                                      "replicas": replicas, "events": n,
                                      "broker": broker_kind, "passthrough_events": n_pass, "modes": run}}
    def fresh() -> SimProcesses:
        """Every mode gets simulators of its own, started cold: no mode inherits another's prefix cache."""
        return SimProcesses(replicas, time_scale=time_scale, profile=profile)

    with tempfile.TemporaryDirectory(prefix="safeguard-bench-") as tmp, local_broker(broker_kind) as broker:
        out["config"]["broker_version"] = broker.version
        bench = _Bench(broker.bootstrap, prof.model, Path(tmp), prof.max_num_seqs)
        if "ideal" in run:
            texts = [orjson.loads(v)["text"] for _, v in workload.events(n)]
            progress("ideal: saturating the replicas over HTTP")
            with fresh() as sims:
                out["ideal"] = asyncio.run(saturate(sims.urls, texts, model=prof.model, concurrency=prof.max_num_seqs))
        if "pipeline" in run:
            progress("pipeline: safeguard consumer end to end")
            with fresh() as sims:
                out["pipeline"] = bench.using(sims.urls).pipeline(workload.events(n))
            if "ideal" in run:
                # A burst ends on whatever long generations started last, so the whole-run rate depends on
                # the order events reach the replica (about +-3% over orders). The same requests, saturated
                # in the order the pipeline consumed them, are the like-for-like capacity.
                progress("ideal: again, in the order the pipeline consumed the events")
                with fresh() as sims:
                    out["ideal"]["pipeline_order"] = asyncio.run(
                        saturate(sims.urls, bench.consumed_texts, model=prof.model, concurrency=prof.max_num_seqs))
        if "naive" in run:
            progress(f"naive: per-message loop for {naive_s:.0f}s")
            with fresh() as sims:
                out["naive"] = bench.using(sims.urls).naive(naive_s)
        if "faust" in run:
            progress("faust: faust-streaming agent")
            with fresh() as sims:
                out["faust"] = bench.using(sims.urls).faust(workload.events(n))
        if "passthrough" in run:
            progress("passthrough: cache-only labels vs raw confluent-kafka loop")
            with fresh() as sims:
                out["passthrough"] = bench.using(sims.urls).passthrough(n_pass)
        if "cascade" in run:
            progress("cascade: generating reviews (training history, steady, shifted and obfuscated phases)")
            work = workload.cascade_workload(n)
            key = Path(tmp) / "cascade-answers.jsonl"
            key.write_bytes(b"\n".join(orjson.dumps(r) for r in work.key_rows) + b"\n")
            with SimProcesses(replicas, time_scale=time_scale, profile=profile, answer_key=key) as sims:
                out["cascade"] = bench.using(sims.urls).cascade(work, n_pass, progress)
    out["ratios"] = ratios(out)
    return out


class _Bench:
    def __init__(self, bootstrap: str, model: str, tmp: Path, seqs: int) -> None:
        self.bootstrap, self.model, self.tmp, self.seqs = bootstrap, model, tmp, seqs
        self.urls: list[str] = []
        self.consumed_texts: list[str] = []  # the last pipeline run's events, in the order it consumed them

    def using(self, urls: list[str]) -> _Bench:
        """The replicas of the next mode."""
        self.urls = urls
        return self

    def _topics(self, partitions: int = 6) -> dict[str, str]:
        tag = uuid.uuid4().hex[:8]
        names = {"input": f"bench-in-{tag}", "labels": f"bench-labels-{tag}", "dlq": f"bench-dlq-{tag}"}
        create_topics(self.bootstrap, {names["input"]: partitions, names["labels"]: partitions, names["dlq"]: 1})
        return names

    def _produce(self, topic: str, items: list[tuple[bytes, bytes]]) -> None:
        p = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5, "logger": LIBRDKAFKA_LOG})
        for key, value in items:
            p.produce(topic, key=key, value=value)
            p.poll(0)
        if p.flush(60):
            raise FatalError("benchmark events were not delivered")

    def _config(self, names: dict[str, str], cache: int, prefilter: dict[str, Any] | None = None) -> Path:
        """Defaults (``batching.max_inflight_events`` included: the local queue bound keeps the
        backlog in Kafka), except that each replica may have 1/8 more requests than it runs, the room
        the adaptive limit needs for the short queue that covers the consumer's I/O batching (as
        docs/configuration.md recommends for production)."""
        conf = {
            "kafka": {"bootstrap_servers": self.bootstrap, "group_id": f"g-{names['input']}",
                      "input_topics": [names["input"]], "labels_topic": names["labels"],
                      "dead_letter_topic": names["dlq"], "librdkafka": {"session.timeout.ms": 6000}},
            "replicas": {"urls": self.urls, "model": self.model,
                         "max_inflight_per_replica": self.seqs + self.seqs // 8},
            "policies": {"dir": str(workload.policy_path().parent), "default": [workload.POLICY_ID],
                         "reload_interval_s": 0},
            "cache": {"max_entries": cache},
            "metrics": {"port": 0},
            **({"prefilter": prefilter} if prefilter else {}),
        }
        path = self.tmp / f"{names['input']}.yaml"
        path.write_text(yaml.safe_dump(conf))
        return path

    def _worker(self, config: Path, n: int, *, warmup: int = 0, when_warm: Callable[[], None] | None = None,
                timeout_s: float = 900) -> dict[str, Any]:
        """Our consumer in its own process (:mod:`streams.devtools.bench.worker`), measured over ``n`` events
        after ``warmup`` unmeasured ones; ``when_warm`` runs once those are settled (it produces the
        measured events)."""
        with tempfile.TemporaryFile("w+") as err, subprocess.Popen(
                [sys.executable, "-m", "streams.devtools.bench.worker", str(config), str(n), str(warmup)],
                stdout=subprocess.PIPE, stderr=err, text=True) as proc:
            assert proc.stdout is not None
            out, problem = "", ""
            try:
                if warmup and read_line(proc.stdout, time.monotonic() + 120) != "warm":
                    problem = f"the {warmup} warm-up events were not labelled"
                else:
                    if when_warm is not None:
                        when_warm()
                    proc.wait(timeout_s)  # it prints one short line: the pipe cannot fill meanwhile
                    out = proc.stdout.read()  # through the same buffer as the warm-up line
            except subprocess.TimeoutExpired:
                problem = f"no result after {timeout_s:.0f} s"
            if problem:
                proc.kill()
                proc.wait()
            elif proc.returncode != 0 or not out.strip():
                problem = f"exit status {proc.returncode}"
            if problem:
                err.seek(0)
                raise FatalError(f"benchmark consumer failed ({problem}): {err.read()[-2000:]}")
        return orjson.loads(out.strip().splitlines()[-1])

    def pipeline(self, items: list[tuple[bytes, bytes]]) -> dict[str, Any]:
        """Our consumer over ``items``, produced in one burst once it runs (after one unmeasured
        warm-up event, so the consumer has joined its group): throughput, latency from consumption
        (``p50_s``/``p99_s``, the labels' ``latency_ms``) and from the record's timestamp to the
        label's (``e2e_*``: what a user sees, time waiting in Kafka included)."""
        names = self._topics()
        warmup = workload.events(1, unique=True, prefix="warm")
        self._produce(names["input"], warmup)
        hits0, queries0 = prefix_cache_tokens(self.urls)
        res = self._worker(self._config(names, cache=0), len(items), warmup=1,
                           when_warm=lambda: self._produce(names["input"], items))
        hits, queries = (a - b for a, b in zip(prefix_cache_tokens(self.urls), (hits0, queries0), strict=True))
        labels = [m for m in self._read(names["labels"], len(items) + 1) if m.key() != warmup[0][0]]
        lat = sorted(orjson.loads(m.value())["latency_ms"] / 1000 for m in labels)
        inputs = {(m.partition(), m.offset()): m for m in self._read(names["input"], len(items) + 1)}
        docs = [orjson.loads(m.value()) for m in labels]
        sources = [(d["source"]["partition"], d["source"]["offset"]) for d in docs]
        e2e = sorted((m.timestamp()[1] - inputs[src].timestamp()[1]) / 1000
                     for m, src in zip(labels, sources, strict=True))
        # consumed at: the label's timestamp less its latency (consumed -> labelled)
        consumed = sorted((m.timestamp()[1] - d["latency_ms"], *src) for m, d, src in zip(labels, docs, sources,
                                                                                           strict=True))
        self.consumed_texts = [orjson.loads(inputs[(p, o)].value())["text"] for _at, p, o in consumed]
        first = consumed[0][0] if consumed else 0.0
        labelled_at = [(m.timestamp()[1] - first) / 1000 for m in labels]
        return {"events": len(items), "elapsed_s": round(res["wall_s"], 3),
                "events_per_s": round(len(items) / res["wall_s"], 2),
                "p50_s": round(percentile(lat, 0.5), 3), "p99_s": round(percentile(lat, 0.99), 3),
                "e2e_p50_s": round(percentile(e2e, 0.5), 3), "e2e_p99_s": round(percentile(e2e, 0.99), 3),
                "steady_events_per_s": round(steady_rate(labelled_at), 2),
                "cpu_us_per_event": round(res["cpu_s"] / len(items) * 1e6, 1),
                "cpu_us_per_event_by_thread": per_event(res.get("cpu_s_by_thread", {}), len(items)),
                "prefix_cache_hit_rate": ratio(hits, queries, 3)}

    def passthrough(self, n: int) -> dict[str, Any]:
        """Every measured label from the dedupe cache: one event warms the cache (the model labels
        it) before the ``n`` duplicates are produced and timed."""
        names = self._topics()
        events = workload.events(n + 1, unique=False)
        self._produce(names["input"], events[:1])
        res = self._worker(self._config(names, cache=1000), n, warmup=1,
                           when_warm=lambda: self._produce(names["input"], events[1:]))
        raw = self._raw(names["input"], n)
        return {"events": n, "events_per_s": round(n / res["wall_s"], 1),
                "cpu_us_per_event": round(res["cpu_s"] / n * 1e6, 1),
                "cpu_us_per_event_by_thread": per_event(res.get("cpu_s_by_thread", {}), n), **raw}

    def cascade(self, work: workload.CascadeWorkload, n_skip: int, progress: Any = print) -> dict[str, Any]:
        """The cascade (the simulated model answers from ``work``'s key): a prefilter trained for
        recall 0.99 on ``work.training``; its stream (steady, shifted, adversarial phases, in one
        consumer run) at the default audit rate, with the live controller and then without. The
        top-level figures are the steady phase's (``events_per_s`` and ``cpu_us_per_event``: the
        whole controlled run's); ``phases`` holds every phase of both runs. Then ``n_skip`` events
        the prefilter decides alone (audits and controller off), timed for the CPU per
        prefilter-decided event, next to the raw loop over the same input."""
        from streams.cascade.train import Example, train
        from streams.policy.model import load_policy

        policy = load_policy(workload.policy_path())
        progress(f"cascade: training a prefilter on {len(work.training)} reviews")
        t0 = time.monotonic()
        trained = train(policy, [Example(t, y) for t, y in work.training], target_recall=0.99)
        train_s = time.monotonic() - t0
        directory = self.tmp / "prefilters"
        directory.mkdir(exist_ok=True)
        trained.prefilter.save(directory / f"{policy.id}.prefilter")
        runs: dict[str, tuple[dict[str, Any], dict[str, dict[str, Any]]]] = {}
        for setting in ("on", "off"):
            progress(f"cascade: {len(work.stream)} events in three phases, controller {setting}")
            runs[setting] = self._cascade_run(work, {"dir": str(directory), "controller": setting == "on"})
        phases = {f"controller_{setting}": figures(labels, work.truth) for setting, (_, labels) in runs.items()}
        res, total = runs["on"][0], len(work.stream)
        progress(f"cascade: {n_skip} events the prefilter decides alone, beside the raw loop")
        skip_events = workload.decided_alone(trained.prefilter, n_skip)
        names_skip = self._topics()
        warm = workload.events(1, prefix="cwarm")
        self._produce(names_skip["input"], warm)
        alone = {"dir": str(directory), "audit_rate": 0.0, "controller": False, "drift_audit_rate": 0.0}
        res_skip = self._worker(self._config(names_skip, cache=0, prefilter=alone), n_skip, warmup=1,
                                when_warm=lambda: self._produce(names_skip["input"], skip_events))
        raw = self._raw(names_skip["input"], n_skip)
        training = {key: trained.prefilter.training.get(key) for key in ("holdout_positives", "recall_lower_bound")}
        return {**headline(phases), "run_events": total, "events_per_s": round(total / res["wall_s"], 2),
                "cpu_us_per_event": round(res["cpu_s"] / total * 1e6, 1),
                "prefiltered_events": n_skip, "prefiltered_events_per_s": round(n_skip / res_skip["wall_s"], 1),
                "cpu_us_per_prefiltered_event": round(res_skip["cpu_s"] / n_skip * 1e6, 1),
                "raw_cpu_us_per_event": raw["raw_cpu_us_per_event"], "phases": phases,
                "training": {"holdout_recall": round(trained.holdout_recall, 4),
                             "holdout_pass_rate": round(trained.holdout_pass_rate, 4), "n_train": trained.n_train,
                             "n_holdout": trained.n_holdout, "positives": trained.positives,
                             "history": work.history, "seconds": round(train_s, 1), **training}}

    def _cascade_run(self, work: workload.CascadeWorkload,
                     prefilter: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """One consumer run over ``work.stream`` (produced in one burst after a warm-up event):
        the worker's measurement and the label of each stream event by event id. One input
        partition, so the phases reach the consumer in order: over several, the consumer reads them
        side by side and one phase's evidence would move another phase's thresholds."""
        names = self._topics(partitions=1)
        self._produce(names["input"], workload.events(1, prefix="cwarm"))
        n = len(work.stream)
        res = self._worker(self._config(names, cache=0, prefilter=prefilter), n, warmup=1,
                           when_warm=lambda: self._produce(names["input"], work.stream))
        labels = {lab["event_id"]: lab for m in self._read(names["labels"], n + 1)
                  for lab in [orjson.loads(m.value())] if lab["event_id"] in work.truth}
        return res, labels

    def _raw(self, topic: str, n: int) -> dict[str, float]:
        """The physical floor: batch consume -> produce (no parsing, no callbacks, no commits), timed
        from the first message to the last acknowledgement. Also the loop of confluent-kafka's own
        examples (``poll()`` per message, a delivery callback per record) for reference."""
        floor = self._raw_loop(topic, n, per_message=False)
        examples = self._raw_loop(topic, n, per_message=True)
        return {"raw_events_per_s": floor[0], "raw_cpu_us_per_event": floor[1],
                "raw_poll_events_per_s": examples[0], "raw_poll_cpu_us_per_event": examples[1]}

    def _raw_loop(self, topic: str, n: int, *, per_message: bool) -> tuple[float, float]:
        out_topic = self._topics(partitions=1)["labels"]
        c = reader_from_beginning(self.bootstrap, [topic])
        p = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5})
        done, acked, t0, c0 = 0, 0, 0.0, 0.0

        def delivered(err: Any, _msg: Any) -> None:
            nonlocal acked
            acked += err is None

        while done < n:
            msgs = [m for m in [c.poll(1.0)] if m is not None] if per_message else c.consume(500, 1.0)
            if msgs and not done:
                t0, c0 = time.monotonic(), time.process_time()
            for m in msgs:
                if m.error() is None:
                    if per_message:
                        p.produce(out_topic, key=m.key(), value=m.value(), on_delivery=delivered)
                    else:
                        p.produce(out_topic, key=m.key(), value=m.value())
                    done += 1
            p.poll(0)
        p.flush(30)
        wall, cpu = time.monotonic() - t0, time.process_time() - c0
        c.close()
        return round(n / wall, 1), round(cpu / n * 1e6, 1)

    def naive(self, seconds: float) -> dict[str, Any]:
        names = self._topics(partitions=1)
        self._produce(names["input"], workload.events(2000))
        proc = subprocess.run([sys.executable, "-m", "streams.devtools.bench.naive", self.bootstrap, names["input"],
                               names["labels"], self.urls[0], str(seconds), self.model],
                              capture_output=True, text=True, timeout=seconds + 120)
        if proc.returncode != 0:
            raise FatalError(f"naive loop failed: {proc.stderr[-2000:]}")
        res = orjson.loads(proc.stdout.strip().splitlines()[-1])
        return {"events": res["events"], "elapsed_s": round(res["elapsed_s"], 2),
                "events_per_s": round(res["events"] / res["elapsed_s"], 2) if res["elapsed_s"] else 0.0}

    def faust(self, items: list[tuple[bytes, bytes]]) -> dict[str, Any]:
        try:
            import faust  # noqa: F401
        except ImportError:
            return {"skipped": "faust-streaming is not installed (pip install 'safeguard-streams[bench]')",
                    "events_per_s": 0.0}
        names = self._topics()
        log = self.tmp / f"faust-{names['input']}.log"
        env = dict(os.environ, BENCH_BOOTSTRAP=self.bootstrap, BENCH_IN=names["input"], BENCH_OUT=names["labels"],
                   BENCH_URLS=",".join(self.urls), BENCH_MODEL=self.model, BENCH_APP=f"bench-{names['input']}",
                   BENCH_DATADIR=str(self.tmp / f"faust-{names['input']}"))
        with log.open("wb") as fh:
            proc = subprocess.Popen([sys.executable, "-m", "faust", "-A", "streams.devtools.bench.faust_app", "worker",
                                     "--without-web", "-l", "info"], env=env, stdout=fh, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while b"Worker]: Ready" not in log.read_bytes():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise FatalError(f"faust worker did not start: {log.read_text()[-2000:]}")
                time.sleep(0.2)
            cpu0 = proc_cpu(proc.pid)
            t0 = time.time()
            self._produce(names["input"], items)
            msgs = self._read(names["labels"], len(items), timeout_s=900)
            cpu = proc_cpu(proc.pid) - cpu0
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        last = max(m.timestamp()[1] for m in msgs) / 1000
        wall = last - t0
        return {"events": len(items), "elapsed_s": round(wall, 3), "events_per_s": round(len(items) / wall, 2),
                "cpu_us_per_event": round(cpu / len(items) * 1e6, 1)}

    def _read(self, topic: str, n: int, timeout_s: float = 300) -> list[Any]:
        c = reader_from_beginning(self.bootstrap, [topic])
        out: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < n and time.monotonic() < deadline:
            out.extend(m for m in c.consume(1000, 0.2) if m.error() is None)
        c.close()
        if len(out) < n:
            raise FatalError(f"only {len(out)} of {n} outputs arrived on {topic}")
        return out
