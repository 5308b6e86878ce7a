"""The benchmark's measured consumer (``streams.devtools.bench.worker`` driven by the runner), on small counts:
it measures what the bench says it measures, and a consumer that cannot run is a clear error."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from streams.devtools.bench import workload
from streams.devtools.bench.runner import _Bench
from streams.errors import FatalError
from streams.ops.profiles import DEFAULT_PROFILE, PROFILES

PROFILE = PROFILES[DEFAULT_PROFILE]


@pytest.fixture
def bench(kafka_bootstrap: str, sims, tmp_path: Path) -> _Bench:
    return _Bench(kafka_bootstrap, PROFILE.model, tmp_path, PROFILE.max_num_seqs).using(sims(1, time_scale=10.0).urls)


def test_passthrough_warm_up_is_settled_before_the_measured_events_exist(bench: _Bench) -> None:
    """The cache-only run: the model labels one warm-up event, and only then are the measured
    duplicates produced, so the timed window holds no model call."""
    names = bench._topics(partitions=3)
    events = workload.events(121, unique=False)
    bench._produce(names["input"], events[:1])
    labels_at_warm: list[int] = []

    def when_warm() -> None:  # settled means acknowledged: the label is on the broker already
        labels_at_warm.append(_records_in(bench.bootstrap, names["labels"]))
        bench._produce(names["input"], events[1:])

    res = bench._worker(bench._config(names, cache=1000), 120, warmup=1, when_warm=when_warm)

    assert labels_at_warm == [1]
    assert res["events"] == 120 and res["wall_s"] > 0 and res["cpu_s"] > 0
    labels = [orjson.loads(m.value()) for m in bench._read(names["labels"], 121)]
    assert sorted(label["decided_by"] for label in labels) == ["cache"] * 120 + ["model"]
    assert next(label["event_id"] for label in labels if label["decided_by"] == "model") == "b0"


def test_pipeline_run_reports_the_events_it_labelled(bench: _Bench) -> None:
    res = bench.pipeline(workload.events(40))
    assert res["events"] == 40
    assert 0 < res["p50_s"] <= res["p99_s"]
    assert 0 < res["e2e_p50_s"] <= res["e2e_p99_s"]
    assert res["e2e_p50_s"] >= res["p50_s"] - 0.01  # from the record's timestamp: waiting in Kafka counts too
    assert res["cpu_us_per_event"] > 0
    assert res["prefix_cache_hit_rate"] is not None and res["prefix_cache_hit_rate"] > 0.5


def test_a_consumer_that_cannot_start_is_a_clear_error(bench: _Bench) -> None:
    names = bench._topics(partitions=1)
    config = bench._config(names, cache=0)
    config.write_text(config.read_text().replace("reload_interval_s: 0", "reload_interval_s: -1"))
    with pytest.raises(FatalError, match=r"benchmark consumer failed \(the 1 warm-up events were not labelled\)"
                                         r"[\s\S]*reload_interval_s"):
        bench._worker(config, 10, warmup=1)


def _records_in(bootstrap: str, topic: str) -> int:
    """Records on the broker now (high watermarks summed; the topics here are never truncated)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-test-watermarks"})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts)
    finally:
        c.close()


async def test_realtime_run_times_what_it_says(kafka_bootstrap: str, sims, tmp_path: Path) -> None:
    """``bench --realtime``'s run, small: every label arrives, every urgent event's model request is
    timed (slot -> answer) and has its provisional decision before its final one, and the figures
    hold together (a final decision never comes before its own model request's answer time)."""
    from streams.devtools.bench.realtime import _one_run

    urls = sims(1, time_scale=10.0).urls
    run = await _one_run(kafka_bootstrap, urls, tmp_path, lanes=True, backlog=150, urgent=4, every_s=0.2)
    assert run["labels"] == run["expected_labels"] == 154
    assert run["urgent_timed_requests"] == 4
    assert 0 < run["provisional_p99_ms"] < 1000 * run["urgent_final_p50_s"]
    assert run["urgent_final_p99_s"] >= run["urgent_service_p50_s"] > 0
    assert run["interventions"] > 0 and run["events_per_s"] > 0
