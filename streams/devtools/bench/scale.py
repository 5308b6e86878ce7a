"""``safeguard bench --scale``: N consumer processes in one group against M simulated replicas.

Every run gets fresh replicas (cold prefix caches) and topics of its own; the N consumers
(:mod:`streams.devtools.bench.member`, the production consumer) join one group, and the events are
produced in one burst only once the group has settled (every partition assigned once, unchanged
for a few seconds), so no rebalance falls inside the measured window. Each consumer keeps at most
``inflight_per_consumer`` events in flight (one replica's batch plus the queue room the adaptive
limit keeps), so every term of min(partitions, consumers x in-flight, replicas) binds in some run.

Throughput is steady-state: completions per second over the middle 80% of the labels (the first
10% are the ramp, the last 10% the drain of the long reasoning tail), from the label records'
timestamps; the replicas' capacity is measured the same way by saturating one replica over HTTP.
p99 is the labels' ``latency_ms`` (consumed -> labelled). The capacity model
(:func:`streams.ops.capacity.predict_run`) predicts each run; its error is printed beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import orjson
import yaml

from streams.devtools.bench import workload
from streams.devtools.bench.ideal import percentile, saturate, steady_rate
from streams.devtools.bench.probes import proc_cpu
from streams.devtools.bench.runner import _Bench
from streams.devtools.broker import local_broker
from streams.devtools.sim.launcher import SimProcesses
from streams.errors import FatalError
from streams.ops.capacity import STEADY_SHARE, Workload, predict_run
from streams.ops.profiles import CHARS_PER_TOKEN, PROFILES

# (consumers, replicas, partitions): the baseline, linear growth (12 partitions divide evenly among
# 1-4 consumers), each bound in turn: in-flight (1x2), replicas (2x1), partitions (4x4x2), and
# partitions that do not divide evenly (4x4x6: two members own twice the backlog of the others).
FULL_RUNS = [(1, 1, 12), (2, 2, 12), (3, 3, 12), (4, 4, 12), (1, 2, 12), (2, 1, 12), (4, 4, 2), (4, 4, 6)]
QUICK_RUNS = [(1, 1, 12), (2, 2, 12), (1, 2, 12)]


def bench_workload(profile: str) -> Workload:
    """The capacity model's inputs for the bench's own events: their mean content and policy length."""
    texts = [orjson.loads(v)["text"] for _, v in workload.events(1000)]
    policy = workload.policy_path().read_text()
    return Workload(events_per_s=1.0, profile=profile, effort="low",
                    content_tokens=sum(math.ceil(len(t) / CHARS_PER_TOKEN) for t in texts) / len(texts),
                    policy_tokens=math.ceil(len(policy) / CHARS_PER_TOKEN))


def run_scale(*, quick: bool, time_scale: float = 4.0, profile: str = "gpt-oss-safeguard-20b@h100",
              runs: list[tuple[int, int, int]] | None = None, seconds: float | None = None,
              progress: Callable[[str], None] = print, broker_kind: str = "embedded") -> dict[str, Any]:
    prof = PROFILES[profile]
    runs = runs or (QUICK_RUNS if quick else FULL_RUNS)
    seconds = seconds or (25.0 if quick else 45.0)
    inflight = prof.max_num_seqs + prof.max_num_seqs // 8
    model = bench_workload(profile)
    out: dict[str, Any] = {"runs": [], "time_scale": time_scale, "profile": profile,
                           "inflight_per_consumer": inflight,
                           "broker": broker_kind, "window": f"middle {STEADY_SHARE:.0%} of completions"}
    with tempfile.TemporaryDirectory(prefix="safeguard-scale-") as tmp, local_broker(broker_kind) as broker:
        bench = _Bench(broker.bootstrap, prof.model, Path(tmp), prof.max_num_seqs)
        one = predict_run(model, consumers=1, replicas=1, partitions=1, inflight_per_consumer=prof.max_num_seqs,
                          time_scale=time_scale)
        n_ideal = max(600, int(one * seconds))
        progress(f"capacity: saturating one replica over HTTP ({n_ideal} requests)")
        texts = [orjson.loads(v)["text"] for _, v in workload.events(n_ideal, prefix="ideal")]
        with SimProcesses(1, time_scale=time_scale, profile=profile) as sims:
            ideal = asyncio.run(saturate(sims.urls, texts, model=prof.model, concurrency=prof.max_num_seqs))
        capacity = ideal["steady_events_per_s"]
        out["replica_events_per_s"] = round(capacity, 2)
        out["replica_predicted_events_per_s"] = round(one, 2)
        for consumers, replicas, partitions in runs:
            predicted = predict_run(model, consumers=consumers, replicas=replicas, partitions=partitions,
                                    inflight_per_consumer=inflight, time_scale=time_scale)
            n = max(600, int(predicted * seconds))
            progress(f"scale: {consumers} consumers x {replicas} replicas, {partitions} partitions, {n} events")
            with SimProcesses(replicas, time_scale=time_scale, profile=profile) as sims:
                res = _Group(bench.using(sims.urls), consumers, partitions, inflight).run(n)
            res.update(consumers=consumers, replicas=replicas, partitions=partitions,
                       utilisation=round(res["events_per_s"] / (replicas * capacity), 3),
                       predicted_events_per_s=round(predicted, 2),
                       prediction_error=round(res["events_per_s"] / predicted - 1, 3))
            out["runs"].append(res)
            progress(f"  {res['events_per_s']} events/s (predicted {res['predicted_events_per_s']}), "
                     f"utilisation {res['utilisation']}, p99 {res['p99_s']} s")
    base = next((r for r in out["runs"] if (r["consumers"], r["replicas"]) == (1, 1)), None)
    if base:
        for r in out["runs"]:
            r["vs_1x1"] = round(r["events_per_s"] / base["events_per_s"], 2)
    return out


class _Group:
    """N member processes of one consumer group over fresh topics."""

    def __init__(self, bench: _Bench, consumers: int, partitions: int, inflight: int) -> None:
        self.bench, self.n_consumers, self.partitions, self.inflight = bench, consumers, partitions, inflight
        self.assigned: list[list[tuple[str, int]]] = [[] for _ in range(consumers)]
        self.changed = time.monotonic()
        self.lock = threading.Lock()

    def run(self, n: int) -> dict[str, Any]:
        names = self.bench._topics(partitions=self.partitions)
        config = self.bench._config(names, cache=0)
        conf = yaml.safe_load(config.read_text())
        conf["batching"] = {"max_inflight_events": self.inflight}
        config.write_text(yaml.safe_dump(conf))
        with contextlib.ExitStack() as stack:
            logs = [stack.enter_context(tempfile.TemporaryFile("w+")) for _ in range(self.n_consumers)]
            return self._measure(names, n, logs, [
                subprocess.Popen([sys.executable, "-m", "streams.devtools.bench.member", str(config)],
                                 stdout=subprocess.PIPE, stderr=log, text=True) for log in logs])

    def _measure(self, names: dict[str, str], n: int, logs: Sequence[IO[str]],
                 procs: list[subprocess.Popen[str]]) -> dict[str, Any]:
        try:
            for i, proc in enumerate(procs):
                assert proc.stdout is not None
                threading.Thread(target=self._follow, args=(i, proc.stdout), daemon=True).start()
            self._settle(procs, logs)
            cpu0, machine0 = sum(proc_cpu(p.pid) for p in procs), _machine_cpu()
            items = workload.events(n, prefix=f"s{self.n_consumers}")
            t0 = time.time()
            self.bench._produce(names["input"], items)
            labels = self.bench._read(names["labels"], n, timeout_s=600)
            cpu = sum(proc_cpu(p.pid) for p in procs) - cpu0
            busy, total = (a - b for a, b in zip(_machine_cpu(), machine0, strict=True))
            with self.lock:
                moved = time.monotonic() - self.changed
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(40)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        done = [m.timestamp()[1] / 1000 for m in labels]
        lat = sorted(orjson.loads(m.value())["latency_ms"] / 1000 for m in labels)
        wall = max(done) - t0
        if moved < wall:
            raise FatalError("the group rebalanced during the measured window; rerun")
        return {"events": n, "events_per_s": round(steady_rate(done), 2), "elapsed_s": round(wall, 2),
                "p50_s": round(percentile(lat, 0.5), 3), "p99_s": round(percentile(lat, 0.99), 3),
                "consumer_cpu_share": round(cpu / wall / (os.cpu_count() or 1), 3),
                "machine_cpu_share": round(busy / total, 3) if total else None}

    def _follow(self, index: int, stream: IO[str]) -> None:
        for line in stream:
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            with self.lock:
                self.assigned[index] = [(str(t), int(p)) for t, p in doc.get("assigned", [])]
                self.changed = time.monotonic()

    def _settle(self, procs: list[subprocess.Popen[str]], logs: Sequence[IO[str]], stable_s: float = 3.0,
                timeout_s: float = 180.0) -> None:
        """Until every partition is assigned to exactly one member, min(N, P) members have some, and
        nothing has moved for ``stable_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for i, p in enumerate(procs):
                if p.poll() is not None:
                    logs[i].seek(0)
                    raise FatalError(f"scale-bench consumer {i} exited with {p.returncode}: {logs[i].read()[-2000:]}")
            with self.lock:
                owned = [len(a) for a in self.assigned]
                union = {tp for a in self.assigned for tp in a}
                quiet = time.monotonic() - self.changed
            if (sum(owned) == len(union) == self.partitions
                    and sum(1 for k in owned if k) == min(self.n_consumers, self.partitions) and quiet >= stable_s):
                return
            time.sleep(0.2)
        raise FatalError(f"the group of {self.n_consumers} did not settle on {self.partitions} partitions in "
                         f"{timeout_s:.0f} s (assignment {self.assigned})")


def _machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU ticks of the whole machine so far, from /proc/stat (Linux; zeros elsewhere):
    consumers, replicas, broker and the bench together, to show when this machine is the limit."""
    try:
        fields = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return 0.0, 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields) - idle, sum(fields)
