"""A real Prometheus server scrapes a running consumer with the rules of k8s/base/alerts.yaml: when
the consumer's only replica goes down, SafeguardNoHealthyReplica goes pending, then fires; while the
replica is up it does not."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import yaml

from streams.devtools.broker import free_port
from tests.integration.helpers import ROOT, produce, read_all, write_config

FOR = "3s"  # the shipped rule waits 1m before firing; the test shortens only that wait


def prometheus() -> str:
    path = shutil.which("prometheus")
    assert path, ("the Prometheus server is not installed: `make test` installs Debian's prometheus package as "
                  "root (apt-get install prometheus), or put prometheus on PATH")
    return path


def alerts(port: int) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/alerts", timeout=5) as resp:  # noqa: S310
        return json.loads(resp.read())["data"]["alerts"]


def query(port: int, expr: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?query=" + urllib.parse.quote(expr)
    with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310
        return json.loads(resp.read())["data"]["result"]


def wait(what: str, check: Any, timeout_s: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            found = check()
        except OSError:
            found = None
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_no_healthy_replica_fires_when_the_only_replica_goes_down(kafka_bootstrap, topics, sims, consumers,
                                                                 tmp_path: Path) -> None:
    names = topics(partitions=1)
    replicas = sims(1, time_scale=50.0)
    metrics_port, prom_port = free_port(), free_port()
    path = write_config(tmp_path, kafka_bootstrap, names, replicas.urls, metrics={"port": metrics_port})
    consumer = consumers(path)
    produce(kafka_bootstrap, names["input"],
            [(b"k0", orjson.dumps({"event_id": "e0", "text": "hello"}))])
    assert len(read_all(kafka_bootstrap, names["labels"], expect=1)) == 1  # the consumer runs and labels

    rule = yaml.safe_load((ROOT / "k8s/base/alerts.yaml").read_text())
    groups = rule["spec"]["groups"]
    for group in groups:
        for r in group["rules"]:
            if r["alert"] == "SafeguardNoHealthyReplica":
                r["for"] = FOR
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp_path / "rules.yaml")],
        "scrape_configs": [{"job_name": "safeguard", "static_configs": [
            {"targets": [f"127.0.0.1:{metrics_port}"], "labels": {"pod": "safeguard-consumer-0"}}]}],
    }))
    log = (tmp_path / "prometheus.log").open("wb")
    server = subprocess.Popen([prometheus(), f"--config.file={tmp_path / 'prometheus.yml'}",
                               f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                               f"--web.listen-address=127.0.0.1:{prom_port}"], stdout=log, stderr=log)
    try:
        healthy = wait("Prometheus to scrape the consumer",
                       lambda: query(prom_port, "safeguard_replica_healthy == 1"))
        assert healthy[0]["metric"]["pod"] == "safeguard-consumer-0"
        time.sleep(4)  # longer than FOR: a healthy replica must not fire
        assert not [a for a in alerts(prom_port) if a["labels"]["alertname"] == "SafeguardNoHealthyReplica"]

        replicas.kill(0)
        down = time.monotonic()
        firing = wait("SafeguardNoHealthyReplica to fire", lambda: [
            a for a in alerts(prom_port)
            if a["labels"]["alertname"] == "SafeguardNoHealthyReplica" and a["state"] == "firing"])
        after = time.monotonic() - down
        alert = firing[0]
        assert alert["labels"]["severity"] == "critical" and alert["labels"]["pod"] == "safeguard-consumer-0"
        assert "no vLLM replica in rotation" in alert["annotations"]["summary"] and alert["annotations"]["runbook"]
        ready = query(prom_port, "safeguard_ready")
        assert ready and ready[0]["value"][1] == "0"  # readiness follows: the consumer stopped asking for work
        print(f"\nalerting: SafeguardNoHealthyReplica firing {after:.1f} s after the replica died "
              f"(for: {FOR}); labels {alert['labels']}")
    finally:
        server.terminate()
        server.wait(30)
        assert consumer.terminate() == 0
