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


def wait(what: str, check: Any, timeout_s: float = 90.0, *, server: Any = None) -> Any:
    """Poll ``check`` until it returns something; on a timeout say what was last seen (the last
    error, and the Prometheus log when the server is given), so a failure can be read."""
    deadline = time.monotonic() + timeout_s
    last: object = "nothing yet"
    while time.monotonic() < deadline:
        if server is not None and server.poll() is not None:
            raise AssertionError(f"Prometheus exited with {server.returncode} while waiting for {what}:\n"
                                 f"{server.log_tail()}")
        try:
            found = check()
        except OSError as exc:
            found, last = None, f"{type(exc).__name__}: {exc}"
        else:
            last = found
        if found:
            return found
        time.sleep(0.5)
    tail = f"\nPrometheus log:\n{server.log_tail()}" if server is not None else ""
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}; last answer: {last}{tail}")


class PrometheusServer:
    """The real Prometheus server on a free loopback port, started until it answers ready. A port
    another process took between choosing it and binding it is retried with a new one."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.log_path = tmp_path / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self, attempts: int = 3) -> PrometheusServer:
        for _ in range(attempts):
            self.port = free_port()
            with self.log_path.open("ab") as log:
                self.proc = subprocess.Popen([
                    prometheus(), f"--config.file={self.tmp_path / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}"], stdout=log, stderr=log)
            try:
                wait("Prometheus to answer ready", self.ready, timeout_s=60, server=self)
                return self
            except AssertionError:
                if self.proc.poll() is None:
                    raise
        raise AssertionError(f"Prometheus did not start in {attempts} attempts:\n{self.log_tail()}")

    def ready(self) -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=5) as resp:  # noqa: S310
            return resp.status == 200

    def poll(self) -> int | None:
        assert self.proc is not None
        return self.proc.poll()

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode if self.proc is not None else None

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else "(no log)"

    def targets(self) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/v1/targets", timeout=5) as resp:  # noqa: S310
            return json.loads(resp.read())["data"]["activeTargets"]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


def test_no_healthy_replica_fires_when_the_only_replica_goes_down(kafka_bootstrap, topics, sims, consumers,
                                                                 tmp_path: Path) -> None:
    names = topics(partitions=1)
    replicas = sims(1, time_scale=50.0)
    metrics_port = free_port()
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
    server = PrometheusServer(tmp_path).start()
    prom_port = server.port
    try:
        try:
            healthy = wait("Prometheus to scrape the consumer",
                           lambda: query(prom_port, "safeguard_replica_healthy == 1"), server=server)
        except AssertionError as exc:  # say why the scrape failed: the target's last error
            raise AssertionError(f"{exc}\nscrape targets: {server.targets()}\nconsumer log:\n"
                                 f"{consumer.log()[-2000:]}") from None
        assert healthy[0]["metric"]["pod"] == "safeguard-consumer-0"
        time.sleep(4)  # longer than FOR: a healthy replica must not fire
        assert not [a for a in alerts(prom_port) if a["labels"]["alertname"] == "SafeguardNoHealthyReplica"]

        replicas.kill(0)
        down = time.monotonic()
        firing = wait("SafeguardNoHealthyReplica to fire", server=server, check=lambda: [
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
        server.stop()
        assert consumer.terminate() == 0
