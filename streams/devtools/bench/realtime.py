"""``safeguard bench --realtime``: two-speed moderation under load (docs/interventions.md).

One broker, simulated replicas started cold for each run. A backlog of reviews on a priority-2
topic saturates the replicas; once they are busy (labels flowing), a trickle of urgent chats arrives
on a priority-0 topic, each held at once by the provisional rules (``urgent: [hold]``). The
reasoning consumer runs in this process (so the bench can time each model request from the moment
it had a replica slot to its answer); the provisional consumer runs as its own process, as deployed.
The same run again with lanes off (every route priority 1, nothing urgent: arrival order, FCFS)
shows what the backlog does to the urgent events without them.

Figures (seconds unless named ``_ms``), from the records' own timestamps:

- ``provisional_p50_ms``/``p99_ms``: urgent record -> its provisional decision, lanes on;
- ``urgent_final_p50_s``/``p99_s``: urgent record -> its final decision; ``urgent_service_p99_s``:
  its model request, slot taken -> answer; ``fcfs_urgent_final_p99_s`` the same with lanes off;
- ``backlog_final_p99_s``: backlog record -> its final decision (lanes on);
- ``events_per_s``/``fcfs_events_per_s``: labels per second from the first to the last, each run;
- ``interventions``: final decisions whose action differs from the provisional one (lanes on).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import yaml
from confluent_kafka import Producer

from streams.app import run_consumer
from streams.config import load_settings
from streams.devtools.bench import workload
from streams.devtools.bench.ideal import percentile
from streams.devtools.broker import create_topics, local_broker, reader_from_beginning
from streams.devtools.sim.launcher import SimProcesses
from streams.engine.pipeline import Pipeline
from streams.errors import FatalError
from streams.inference.replicas.pool import DEFAULT_LANE, Lane
from streams.kafka.logs import LIBRDKAFKA_LOG
from streams.policy.model import STARTER_POLICIES

Timing = tuple[float, float, float]  # (lane since: the record's time, slot taken, answered), wall clock


def run_realtime(*, quick: bool, time_scale: float, profile: str, broker_kind: str = "embedded",
                 replicas: int = 1, progress: Callable[[str], None] = print) -> dict[str, Any]:
    backlog, urgent, every_s = (1200, 12, 0.5) if quick else (4000, 40, 0.5)
    config = {"quick": quick, "profile": profile, "time_scale": time_scale, "replicas": replicas,
              "backlog_events": backlog, "urgent_events": urgent, "urgent_every_s": every_s, "broker": broker_kind}
    with tempfile.TemporaryDirectory(prefix="safeguard-realtime-") as tmp, local_broker(broker_kind) as broker:
        config["broker_version"] = broker.version
        runs = {}
        for lanes in (True, False):
            progress(f"realtime: backlog of {backlog} and {urgent} urgent events, lanes {'on' if lanes else 'off'}")
            with SimProcesses(replicas, time_scale=time_scale, profile=profile) as sims:
                runs[lanes] = asyncio.run(_one_run(broker.bootstrap, sims.urls, Path(tmp), lanes=lanes,
                                                   backlog=backlog, urgent=urgent, every_s=every_s))
    on, off = runs[True], runs[False]
    figures = {"provisional_p50_ms": on["provisional_p50_ms"], "provisional_p99_ms": on["provisional_p99_ms"],
               "urgent_final_p50_s": on["urgent_final_p50_s"], "urgent_final_p99_s": on["urgent_final_p99_s"],
               "urgent_service_p99_s": on["urgent_service_p99_s"], "backlog_final_p99_s": on["backlog_final_p99_s"],
               "fcfs_urgent_final_p99_s": off["urgent_final_p99_s"], "interventions": on["interventions"],
               "events_per_s": on["events_per_s"], "fcfs_events_per_s": off["events_per_s"]}
    ratios = {"urgent_final_p99_vs_service_p99": _ratio(figures["urgent_final_p99_s"],
                                                        figures["urgent_service_p99_s"]),
              "fcfs_urgent_final_p99_vs_lanes": _ratio(figures["fcfs_urgent_final_p99_s"],
                                                       figures["urgent_final_p99_s"]),
              "events_per_s_lanes_vs_fcfs": _ratio(figures["events_per_s"], figures["fcfs_events_per_s"])}
    return {"config": config, "realtime": figures, "ratios": ratios,
            "runs": {"lanes": on, "fcfs": off}}


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


async def _one_run(bootstrap: str, urls: list[str], tmp: Path, *, lanes: bool, backlog: int, urgent: int,
                   every_s: float) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    names = {"backlog": f"rt-backlog-{tag}", "urgent": f"rt-urgent-{tag}", "labels": f"rt-labels-{tag}",
             "dlq": f"rt-dlq-{tag}", "decisions": f"rt-decisions-{tag}"}
    create_topics(bootstrap, {names["backlog"]: 3, names["urgent"]: 1, names["labels"]: 3, names["dlq"]: 1,
                              names["decisions"]: 3})
    path = tmp / f"config-{tag}.yaml"
    path.write_text(yaml.safe_dump(_config(bootstrap, urls, names, lanes=lanes)))
    _produce(bootstrap, names["backlog"], workload.events(backlog, prefix="b"))
    provisional = subprocess.Popen([sys.executable, "-m", "streams", "--log-level", "warning", "run", "--provisional",
                                    "--config", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    timings: list[Timing] = []
    holder: list[Pipeline] = []
    reasoning = asyncio.create_task(run_consumer(load_settings(path), on_pipeline=lambda p: _timed(p, timings,
                                                                                                   holder)))
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(None, _wait_labels, bootstrap, names["labels"], 50, 600.0, reasoning)
        urgent_at = await loop.run_in_executor(None, _trickle, bootstrap, names["urgent"], urgent, every_s)
        total = backlog + urgent
        await loop.run_in_executor(None, _wait_labels, bootstrap, names["labels"], total, 1800.0, reasoning)
        await loop.run_in_executor(None, _wait_decisions, bootstrap, names["decisions"], set(urgent_at), 120.0)
    finally:
        for p in holder:
            p.stop()
        await asyncio.gather(reasoning, return_exceptions=True)
        provisional.terminate()
        _, err = provisional.communicate(timeout=60)
    if provisional.returncode not in (0, -15):
        raise FatalError(f"the provisional consumer exited {provisional.returncode}: {err.decode()[-2000:]}")
    return _figures(bootstrap, names, urgent_at, timings, total)


def _config(bootstrap: str, urls: list[str], names: dict[str, str], *, lanes: bool) -> dict[str, Any]:
    policy = workload.POLICY_ID
    return {
        "kafka": {"bootstrap_servers": bootstrap, "group_id": f"g-{names['labels']}",
                  "input_topics": [names["backlog"], names["urgent"]], "labels_topic": names["labels"],
                  "dead_letter_topic": names["dlq"], "librdkafka": {"session.timeout.ms": 6000}},
        "replicas": {"urls": urls},
        "policies": {"dir": str(STARTER_POLICIES), "routes": [
            {"topic": names["urgent"], "policies": [policy], "priority": 0 if lanes else 1},
            {"topic": names["backlog"], "policies": [policy], "priority": 2 if lanes else 1}]},
        "cache": {"max_entries": 0},
        "metrics": {"port": 0},
        "actions": {"topic": names["decisions"], "rules": [{"violation": True, "action": "remove"}],
                    "provisional": {"default": "allow", "rules": [{"topic": names["urgent"], "action": "hold"}],
                                    "urgent": ["hold"] if lanes else []}},
    }


def _timed(pipeline: Pipeline, timings: list[Timing], holder: list[Pipeline]) -> None:
    """Times each model request from the moment it has a replica slot to its answer (the lane's
    ``on_sent`` seam), by its lane's ``since`` (the record's time)."""
    holder.append(pipeline)
    pool: Any = pipeline.capacity
    chat = pool.chat

    async def timed(body: dict[str, Any], lane: Lane = DEFAULT_LANE) -> Any:
        sent: list[float] = []

        def on_sent() -> None:
            sent.append(time.time())
            if lane.on_sent is not None:
                lane.on_sent()

        result = await chat(body, Lane(lane.priority, lane.since, on_sent))
        timings.append((lane.since, sent[0] if sent else time.time(), time.time()))
        return result

    pool.chat = timed


def _produce(bootstrap: str, topic: str, items: list[tuple[bytes, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "logger": LIBRDKAFKA_LOG})
    for key, value in items:
        producer.produce(topic, key=key, value=value)
        producer.poll(0)
    if producer.flush(30):
        raise FatalError("could not deliver the bench events")


def _trickle(bootstrap: str, topic: str, n: int, every_s: float) -> dict[str, float]:
    """``n`` urgent chats, one every ``every_s``; returns each one's record timestamp (seconds)."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "logger": LIBRDKAFKA_LOG})
    stamped: dict[str, float] = {}
    lock = threading.Lock()
    for i in range(n):
        event_id = f"u{i}"
        doc = {"event_id": event_id, "kind": "chat",
               "messages": [{"role": "user", "content": f"is this seller legit? order {i} never arrived"}]}

        def acked(err: Any, msg: Any, event_id: str = event_id) -> None:
            if err is None:
                with lock:
                    stamped[event_id] = msg.timestamp()[1] / 1000
        producer.produce(topic, key=event_id.encode(), value=orjson.dumps(doc), on_delivery=acked)
        producer.poll(0)
        time.sleep(every_s)
    if producer.flush(30):
        raise FatalError("could not deliver the urgent events")
    return stamped


def _wait_labels(bootstrap: str, topic: str, n: int, timeout_s: float, consumer: asyncio.Task[Any]) -> None:
    reader = reader_from_beginning(bootstrap, [topic])
    seen: set[bytes] = set()
    deadline = time.monotonic() + timeout_s
    try:
        while len(seen) < n:
            if consumer.done() or time.monotonic() > deadline:
                raise FatalError(f"{len(seen)} of {n} labels after {timeout_s:.0f} s "
                                 f"(consumer stopped: {consumer.done()})")
            seen |= {m.key() or b"" for m in reader.consume(1000, 0.2) if m.error() is None}
    finally:
        reader.close()


def _wait_decisions(bootstrap: str, topic: str, urgent: set[str], timeout_s: float) -> None:
    """Until every urgent event has its provisional and its final decision."""
    reader = reader_from_beginning(bootstrap, [topic])
    seen: set[tuple[str, str]] = set()
    deadline = time.monotonic() + timeout_s
    try:
        while not all((s, e) in seen for e in urgent for s in ("provisional", "final")):
            if time.monotonic() > deadline:
                raise FatalError(f"urgent decisions missing after {timeout_s:.0f} s")
            for m in reader.consume(1000, 0.2):
                if m.error() is None:
                    d = orjson.loads(m.value() or b"{}")
                    seen.add((d["stage"], d["event_id"]))
    finally:
        reader.close()


def _read_all(bootstrap: str, topic: str) -> list[Any]:
    reader = reader_from_beginning(bootstrap, [topic])
    out: list[Any] = []
    try:
        while batch := [m for m in reader.consume(5000, 1.0) if m.error() is None]:
            out += batch
    finally:
        reader.close()
    return out


def _figures(bootstrap: str, names: dict[str, str], urgent_at: dict[str, float], timings: list[Timing],
             total: int) -> dict[str, Any]:
    backlog_at = {orjson.loads(m.value())["event_id"]: m.timestamp()[1] / 1000
                  for m in _read_all(bootstrap, names["backlog"])}
    stages: dict[str, dict[str, tuple[float, dict[str, Any]]]] = {"provisional": {}, "final": {}}
    for m in _read_all(bootstrap, names["decisions"]):
        d = orjson.loads(m.value())
        stages.setdefault(d["stage"], {}).setdefault(d["event_id"], (m.timestamp()[1] / 1000, d))
    labels = sorted(m.timestamp()[1] / 1000 for m in _read_all(bootstrap, names["labels"]))

    def after(stage: str, born: dict[str, float]) -> list[float]:
        return sorted(max(0.0, stages[stage][e][0] - t) for e, t in born.items() if e in stages[stage])

    provisional, urgent_final = after("provisional", urgent_at), after("final", urgent_at)
    backlog_final = after("final", backlog_at)
    by_since = {round(t, 3): e for e, t in urgent_at.items()}
    service = sorted(answered - sent for since, sent, answered in timings if round(since, 3) in by_since)
    changed = sum(1 for _, d in stages["final"].values() if d["changed"])
    span = labels[-1] - labels[0] if len(labels) > 1 else 0.0
    return {"provisional_p50_ms": round(percentile(provisional, 0.5) * 1000, 1),
            "provisional_p99_ms": round(percentile(provisional, 0.99) * 1000, 1),
            "urgent_final_p50_s": round(percentile(urgent_final, 0.5), 3),
            "urgent_final_p99_s": round(percentile(urgent_final, 0.99), 3),
            "urgent_service_p99_s": round(percentile(service, 0.99), 3),
            "urgent_service_p50_s": round(percentile(service, 0.5), 3),
            "backlog_final_p99_s": round(percentile(backlog_final, 0.99), 3),
            "interventions": changed, "events_per_s": round(len(labels) / span, 2) if span else 0.0,
            "labels": len(labels), "expected_labels": total, "urgent_timed_requests": len(service)}
