"""k8s/ manifests validate offline and agree with the code they deploy."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from streams.authoring.configmap import policies_configmap
from streams.config import load_settings

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "k8s" / "base"
K8S_VERSION = "1.30"
CRD_REQUIRED = {  # schemas of CRDs are not bundled offline: check the fields their controllers require
    ("keda.sh/v1alpha1", "ScaledObject"): ["spec.scaleTargetRef.name", "spec.triggers"],
    ("keda.sh/v1alpha1", "TriggerAuthentication"): ["spec.secretTargetRef"],
    ("monitoring.coreos.com/v1", "PodMonitor"): ["spec.selector", "spec.podMetricsEndpoints"],
    ("monitoring.coreos.com/v1", "PrometheusRule"): ["spec.groups"],
}


def documents() -> list[dict]:
    docs = []
    for path in sorted(BASE.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def by_kind(kind: str, name: str) -> dict:
    return next(d for d in documents() if d["kind"] == kind and d["metadata"]["name"] == name)


def dig(doc: dict, dotted: str) -> object:
    for key in dotted.split("."):
        doc = doc[key]
    return doc


def test_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((BASE / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}


@pytest.mark.parametrize("doc", documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_manifest_validates(doc: dict) -> None:
    key = (doc["apiVersion"], doc["kind"])
    if key in CRD_REQUIRED:
        for field in CRD_REQUIRED[key]:
            assert dig(doc, field), f"{doc['kind']} needs {field}"
        return
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_consumer_config_loads_with_our_settings_model(tmp_path: Path) -> None:
    path = tmp_path / "safeguard.yaml"
    path.write_text(by_kind("ConfigMap", "safeguard-config")["data"]["safeguard.yaml"])
    settings = load_settings(path)
    deployment = by_kind("StatefulSet", "safeguard-consumer")["spec"]["template"]["spec"]
    assert deployment["terminationGracePeriodSeconds"] > settings.batching.drain_timeout_s
    container = deployment["containers"][0]
    assert container["ports"][0]["containerPort"] == settings.metrics.port
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert deployment["securityContext"]["runAsNonRoot"] and container["securityContext"]["readOnlyRootFilesystem"]
    scaled = by_kind("ScaledObject", "safeguard-consumer")
    trigger = scaled["spec"]["triggers"][0]["metadata"]
    assert trigger["consumerGroup"] == settings.kafka.group_id
    assert trigger["topic"] in settings.kafka.input_topics
    assert scaled["spec"]["maxReplicaCount"] <= 12  # the input topic's partitions
    assert scaled["spec"]["scaleTargetRef"]["kind"] == "StatefulSet"
    work = next(t for t in scaled["spec"]["triggers"] if t["type"] == "prometheus")["metadata"]["query"]
    assert "safeguard_pending_work_seconds" in work and f'topic="{settings.kafka.input_topics[0]}"' in work
    env = {e["name"]: e for e in container["env"]}
    assert env["SAFEGUARD_KAFKA__GROUP_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_the_escalation_deployment_runs_escalate_on_the_consumer_config(tmp_path: Path) -> None:
    from streams.interventions.actions import check_rules

    path = tmp_path / "safeguard.yaml"
    path.write_text(by_kind("ConfigMap", "safeguard-config")["data"]["safeguard.yaml"])
    settings = load_settings(path)
    assert settings.escalation.actor_field and settings.actions.topic
    check_rules(settings.actions, [p.stem for p in (ROOT / "policies").glob("*.md")])  # rules name real policies
    pod = by_kind("Deployment", "safeguard-escalate")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"][:1] == ["escalate"] and "/etc/safeguard/safeguard.yaml" in container["args"]
    assert container["ports"][0]["containerPort"] == settings.metrics.port
    assert pod["securityContext"]["runAsNonRoot"] and container["securityContext"]["readOnlyRootFilesystem"]


def test_policies_configmap_is_current() -> None:
    expected = policies_configmap(ROOT / "policies", "safeguard-policies").split("\n", 1)[1]
    current = (BASE / "policies.yaml").read_text().split("\n", 1)[1]
    assert current == expected, "k8s/base/policies.yaml is stale: run `make k8s`"


def test_serve_replica_flags_match_the_vllm_manifest(capsys) -> None:
    from streams.cli.main import main
    from streams.ops.vllm import serve_command

    assert main(["serve-replica"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed[:3] == ["vllm", "serve", "openai/gpt-oss-safeguard-20b"]
    container = by_kind("Deployment", "vllm")["spec"]["template"]["spec"]["containers"][0]
    flags = {a for a in serve_command("gpt-oss-safeguard-20b@h100") if a.startswith("--") and "host" not in a}
    manifest = set(container["args"])
    assert {f for f in flags if not f.startswith("--port")} <= manifest
    assert "--model=openai/gpt-oss-safeguard-20b" in manifest


def test_serve_replica_exec_runs_vllm_from_path_or_says_how_to_install_it(tmp_path, monkeypatch, capsys) -> None:
    """Never a real vLLM: PATH holds only what this test puts there, and exec is intercepted."""
    import os

    from streams.cli.main import main
    from streams.ops.vllm import serve_command

    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["serve-replica", "--exec"]) == 1  # no vllm on PATH: a clear error, not a crash
    assert "pip install 'safeguard-streams[vllm]'" in capsys.readouterr().err
    fake = tmp_path / "vllm"
    fake.write_text("#!/bin/sh\nexit 3\n")
    fake.chmod(0o755)
    execs: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(os, "execv", lambda path, argv: execs.append((path, argv)))
    assert main(["serve-replica", "--exec", "--port", "8123"]) == 0
    assert execs == [(str(fake), serve_command("gpt-oss-safeguard-20b@h100", port=8123))]


def test_grafana_dashboard_uses_only_metrics_we_export() -> None:
    import json
    import re

    from prometheus_client import CollectorRegistry

    from streams.interventions.escalate import EscalationMetrics
    from streams.ops.metrics import build_metrics, register_cache

    metrics = build_metrics(CollectorRegistry())
    register_cache(metrics, lambda: (0, 0, 0, 0))
    exported: set[str] = set()
    families = list(metrics.registry.collect()) + list(EscalationMetrics(CollectorRegistry()).registry.collect())
    for family in families:
        suffix = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        exported |= {family.name + s for s in suffix}
    dashboard = json.loads((ROOT / "k8s/grafana/safeguard-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"safeguard_[a-z_]+", e)}
    assert used and used <= exported, used - exported
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("lag", "latency", "replica health", "violations", "dead letters", "events consumed"):
        assert topic in titles


def test_the_provisional_deployment_runs_run_provisional_and_scales_on_its_own_group(tmp_path: Path) -> None:
    from streams.app import provisional_settings
    from streams.interventions.actions import check_rules

    path = tmp_path / "safeguard.yaml"
    path.write_text(by_kind("ConfigMap", "safeguard-config")["data"]["safeguard.yaml"])
    settings = load_settings(path)
    assert settings.actions.provisional is not None
    check_rules(settings.actions, [p.stem for p in (ROOT / "policies").glob("*.md")])
    pod = by_kind("Deployment", "safeguard-provisional")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"][:2] == ["run", "--provisional"] and "/etc/safeguard/safeguard.yaml" in container["args"]
    assert "nvidia.com/gpu" not in str(container["resources"])  # CPU only
    assert pod["terminationGracePeriodSeconds"] > settings.batching.drain_timeout_s
    trigger = by_kind("ScaledObject", "safeguard-provisional")["spec"]["triggers"][0]["metadata"]
    assert trigger["consumerGroup"] == provisional_settings(settings).kafka.group_id
    assert trigger["topic"] in settings.kafka.input_topics


COOP = ROOT / "k8s" / "coop"


def coop_documents() -> list[dict]:
    return [d for d in yaml.safe_load_all((COOP / "coop.yaml").read_text()) if d]


@pytest.mark.parametrize("doc", coop_documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_coop_manifest_validates(doc: dict) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_coop_overlay_runs_both_coop_commands_on_settings_our_model_accepts(tmp_path: Path, monkeypatch) -> None:
    from streams.cli.main import _parser as build_parser

    kustomization = yaml.safe_load((COOP / "kustomization.yaml").read_text())
    assert "../base" in kustomization["resources"] and "coop.yaml" in kustomization["resources"]
    patch = yaml.safe_load((COOP / kustomization["patches"][0]["path"]).read_text())
    assert (patch["kind"], patch["metadata"]["name"]) == ("StatefulSet", "safeguard-consumer")
    assert patch["spec"]["template"]["spec"]["containers"][0]["name"] == \
        by_kind("StatefulSet", "safeguard-consumer")["spec"]["template"]["spec"]["containers"][0]["name"]
    docs = {(d["kind"], d["metadata"]["name"]): d for d in coop_documents()}
    path = tmp_path / "safeguard.yaml"
    path.write_text(by_kind("ConfigMap", "safeguard-config")["data"]["safeguard.yaml"])
    env = dict(docs[("ConfigMap", "coop-env")]["data"])  # the consumer's: no API key, it never calls Coop
    container = patch["spec"]["template"]["spec"]["containers"][0]
    assert "SAFEGUARD_INTEGRATIONS__COOP__API_KEY" not in {e["name"] for e in container.get("env", [])}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(path)
    assert settings.integrations.coop.url and settings.integrations.coop.report_actions == ["review"]
    for name, command in (("safeguard-coop-reports", ["coop", "reports"]),
                          ("safeguard-coop-callbacks", ["coop", "callbacks"])):
        container = docs[("Deployment", name)]["spec"]["template"]["spec"]["containers"][0]
        assert container["args"][:2] == command
        args = build_parser().parse_args(container["args"])  # the image's ENTRYPOINT is `safeguard`
        assert str(args.config) == "/etc/safeguard/safeguard.yaml"
        secrets = {e["name"] for e in container["env"]}
        needed = ("SAFEGUARD_INTEGRATIONS__COOP__API_KEY" if command[1] == "reports"
                  else "SAFEGUARD_INTEGRATIONS__COOP__CALLBACK_SECRET")
        assert needed in secrets
