from __future__ import annotations

import pytest

from streams.config import load_settings
from streams.errors import ConfigError


def test_defaults_match_design() -> None:
    s = load_settings(None)
    assert s.kafka.bootstrap_servers == "localhost:9092"
    assert s.kafka.input_topics == ["safeguard.content"]
    assert s.delivery == "at_least_once"
    assert s.replicas.max_inflight_per_replica == 256
    assert s.policies.reasoning_effort == "low"
    assert s.input.max_event_bytes == 1_048_576
    assert s.output.reasoning == "inline"
    assert s.batching.max_poll_records == 500
    assert s.metrics.port == 9400


def test_yaml_then_env_override(tmp_path, monkeypatch) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("kafka:\n  bootstrap_servers: a:1\n  group_id: g1\nreplicas:\n  urls: [http://r1:8000/v1/]\n")
    monkeypatch.setenv("SAFEGUARD_KAFKA__BOOTSTRAP_SERVERS", "b:2")
    s = load_settings(f)
    assert s.kafka.bootstrap_servers == "b:2"  # env wins
    assert s.kafka.group_id == "g1"  # file kept where env is silent
    assert s.replicas.urls == ["http://r1:8000/v1"]


def test_unknown_key_in_file_is_an_error(tmp_path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("kafka:\n  bootstrap_server: typo:1\n")
    with pytest.raises(ConfigError, match=r"kafka\.bootstrap_server: unknown key"):
        load_settings(f)


def test_unknown_key_in_env_is_an_error(monkeypatch) -> None:
    monkeypatch.setenv("SAFEGUARD_BATCHING__NOPE", "1")
    with pytest.raises(ConfigError, match="unknown key"):
        load_settings(None)


def test_bad_values_are_explained(tmp_path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("delivery: sometimes\nreplicas:\n  max_inflight_per_replica: 0\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(f)
    assert "delivery" in str(exc.value) and "max_inflight_per_replica" in str(exc.value)


def test_missing_file_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.yaml")


def test_secret_not_in_repr() -> None:
    s = load_settings(None, {"replicas": {"api_key": "sk-very-secret"}})
    assert "sk-very-secret" not in repr(s)
    assert s.replicas.api_key is not None and s.replicas.api_key.get_secret_value() == "sk-very-secret"


def test_settings_are_frozen() -> None:
    s = load_settings(None)
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises ValidationError on frozen assignment
        s.kafka.group_id = "x"  # type: ignore[misc]


def test_env_json_merges_into_librdkafka_from_file(tmp_path, monkeypatch) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("kafka:\n  librdkafka: {security.protocol: SASL_SSL, sasl.username: u}\n")
    monkeypatch.setenv("SAFEGUARD_KAFKA__LIBRDKAFKA", '{"sasl.password": "pw"}')
    s = load_settings(f)
    assert s.kafka.librdkafka == {"security.protocol": "SASL_SSL", "sasl.username": "u", "sasl.password": "pw"}


def test_readme_first_screen_config_loads(tmp_path, monkeypatch) -> None:
    """The config README's first screen tells people to write must stay valid as the settings evolve."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    body = readme.split("cat > safeguard.yaml <<'YAML'\n", 1)[1].split("\nYAML\n", 1)[0]
    f = tmp_path / "safeguard.yaml"
    f.write_text(body)
    monkeypatch.setenv("SAFEGUARD_KAFKA__SECURITY__SASL_PASSWORD", "from-the-environment")
    s = load_settings(f)
    assert s.replicas.urls == ["http://vllm-0:8000/v1", "http://vllm-1:8000/v1"]
    assert s.replicas.max_inflight_per_replica == 288
    assert s.kafka.security.sasl_password is not None
    assert [r.kind for r in s.policies.routes] == ["review", "chat"]


def test_command_line_overrides_beat_the_environment_which_beats_the_file(tmp_path, monkeypatch) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("kafka:\n  policies_topic: from-file\n  group_id: file-group\n  labels_topic: file-labels\n")
    monkeypatch.setenv("SAFEGUARD_KAFKA__POLICIES_TOPIC", "from-env")
    monkeypatch.setenv("SAFEGUARD_KAFKA__GROUP_ID", "env-group")
    s = load_settings(f, {"kafka": {"policies_topic": "from-flag"}})
    assert (s.kafka.policies_topic, s.kafka.group_id, s.kafka.labels_topic) == ("from-flag", "env-group",
                                                                                 "file-labels")
    assert load_settings(f).kafka.policies_topic == "from-env"  # the override was for that call only


def test_a_variable_naming_no_section_is_an_error(monkeypatch) -> None:
    monkeypatch.setenv("SAFEGUARD_KAFAK__BOOTSTRAP_SERVERS", "typo:9092")
    with pytest.raises(ConfigError, match="SAFEGUARD_KAFAK__BOOTSTRAP_SERVERS: no configuration section 'kafak'"):
        load_settings(None)


def test_a_variable_that_is_not_the_json_a_list_needs_is_a_configuration_error(monkeypatch) -> None:
    monkeypatch.setenv("SAFEGUARD_KAFKA__INPUT_TOPICS", "a,b")
    with pytest.raises(ConfigError, match="invalid environment variable"):
        load_settings(None)


def test_static_membership_from_the_environment(monkeypatch) -> None:
    """k8s/base sets SAFEGUARD_KAFKA__GROUP_INSTANCE_ID from the StatefulSet pod name."""
    from streams.kafka.config import consumer_config

    assert "group.instance.id" not in consumer_config(load_settings(None).kafka)
    monkeypatch.setenv("SAFEGUARD_KAFKA__GROUP_INSTANCE_ID", "safeguard-consumer-3")
    conf = consumer_config(load_settings(None).kafka)
    assert conf["group.instance.id"] == "safeguard-consumer-3" and conf["group.id"] == "safeguard"


def test_escalation_processing_guarantee_is_at_least_once_unless_chosen(tmp_path) -> None:
    assert load_settings(None).escalation.processing_guarantee == "at_least_once"
    f = tmp_path / "c.yaml"
    f.write_text("escalation:\n  processing_guarantee: exactly_once\n")
    assert load_settings(f).escalation.processing_guarantee == "exactly_once"
    f.write_text("escalation:\n  processing_guarantee: at_most_once\n")
    with pytest.raises(ConfigError, match="processing_guarantee"):
        load_settings(f)
