"""k8s/base/alerts.yaml with the real promtool: the rules are valid, and each alert fires when it
should and stays quiet when it should not (tests/unit/ops/alerts_test.yaml)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[3]
RULE = ROOT / "k8s/base/alerts.yaml"


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, ("promtool is not installed: `make test` installs Debian's prometheus package as root "
                  "(apt-get install prometheus), or put promtool on PATH")
    return path


def rule_groups(tmp_path: Path) -> Path:
    doc = yaml.safe_load(RULE.read_text())
    assert doc["kind"] == "PrometheusRule"
    out = tmp_path / "rules.yaml"
    out.write_text(yaml.safe_dump({"groups": doc["spec"]["groups"]}))
    return out


def test_the_rules_are_valid_and_every_alert_has_a_runbook(tmp_path: Path) -> None:
    rules = rule_groups(tmp_path)
    res = subprocess.run([promtool(), "check", "rules", str(rules)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    alerts = [r for g in yaml.safe_load(rules.read_text())["groups"] for r in g["rules"]]
    assert {a["alert"] for a in alerts} >= {"SafeguardNoHealthyReplica", "SafeguardConsumerNotReady",
                                            "SafeguardConsumerLagGrowing", "SafeguardDeadLetterRate",
                                            "SafeguardPrefilterMissesViolations", "SafeguardDecisionsStalled",
                                            "SafeguardPrefilterSendsNearlyEverything",
                                            "SafeguardEscalationStalled"}
    for a in alerts:
        assert a["labels"]["severity"] in ("warning", "critical") and len(a["annotations"]["runbook"]) > 80, a


# The value each firing case of alerts_test.yaml gives, as the annotations render it.
VALUES = {"SafeguardDeadLetterRate": "10%", "SafeguardPrefilterMissesViolations": "5%"}


def with_annotations(cases: dict, rules: Path) -> dict:
    """promtool compares annotations exactly: fill each expected alert's from its rule, with
    ``{{ $labels.x }}`` rendered from the expected labels and ``{{ $value | humanizePercentage }}``
    from VALUES."""
    import re

    by_name = {r["alert"]: r for g in yaml.safe_load(rules.read_text())["groups"] for r in g["rules"]}
    for test in cases["tests"]:
        for check in test.get("alert_rule_test", []):
            for alert in check.get("exp_alerts", []):
                if "exp_annotations" in alert:
                    continue
                labels = alert.get("exp_labels", {})
                name = check["alertname"]
                alert["exp_annotations"] = {
                    k: re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m, labels=labels: labels[m.group(1)], v).replace(
                        "{{ $value | humanizePercentage }}", VALUES.get(name, "?"))
                    for k, v in by_name[name]["annotations"].items()}
    return cases


def test_promtool_unit_tests_of_every_alert(tmp_path: Path) -> None:
    rules = rule_groups(tmp_path)
    cases = yaml.safe_load(Path(__file__).with_name("alerts_test.yaml").read_text())
    (tmp_path / "alerts_test.yaml").write_text(yaml.safe_dump(with_annotations(cases, rules), width=10_000))
    res = subprocess.run([promtool(), "test", "rules", "alerts_test.yaml"], capture_output=True, text=True,
                         cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    tested = {check["alertname"] for test in cases["tests"] for check in test["alert_rule_test"]
              if check.get("exp_alerts")}
    alerts = {r["alert"] for g in yaml.safe_load((tmp_path / "rules.yaml").read_text())["groups"] for r in g["rules"]}
    assert tested == alerts, alerts - tested  # every alert has a promtool case
