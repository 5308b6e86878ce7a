"""Configuration: one frozen settings tree (every key: docs/configuration.md).

Read once at start-up from ``--config FILE`` (YAML), then overridden by environment variables
``SAFEGUARD_<SECTION>__<KEY>`` (for example ``SAFEGUARD_KAFKA__BOOTSTRAP_SERVERS``); values given on
the command line override both. Unknown keys, and ``SAFEGUARD_*`` variables naming no section, are
errors. The tree is passed down; no other module reads the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from streams.errors import ConfigError

Kind = Literal["message", "completion", "chat", "review"]
Effort = Literal["low", "medium", "high"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KafkaSecurity(_Section):
    """Typed security settings rendered into librdkafka's ``security.protocol``, ``sasl.*``, ``ssl.*``.

    Secrets are ``SecretStr``: never in ``repr``, logs or errors. Set them through the environment,
    e.g. ``SAFEGUARD_KAFKA__SECURITY__SASL_PASSWORD``.
    """

    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    ssl_key_password: SecretStr | None = None

    def librdkafka(self) -> dict[str, str]:
        pairs: dict[str, str | SecretStr | None] = {
            "sasl.mechanisms": self.sasl_mechanism, "sasl.username": self.sasl_username,
            "sasl.password": self.sasl_password, "ssl.ca.location": self.ssl_ca_location,
            "ssl.certificate.location": self.ssl_certificate_location, "ssl.key.location": self.ssl_key_location,
            "ssl.key.password": self.ssl_key_password,
        }
        out: dict[str, str] = {"security.protocol": self.protocol}
        for key, value in pairs.items():
            if value is not None:
                out[key] = value.get_secret_value() if isinstance(value, SecretStr) else value
        return out


class KafkaSettings(_Section):
    bootstrap_servers: str = "localhost:9092"
    group_id: str = "safeguard"
    input_topics: list[str] = Field(default_factory=lambda: ["safeguard.content"], min_length=1)
    labels_topic: str = "safeguard.labels"
    dead_letter_topic: str = "safeguard.dlq"
    reasoning_topic: str = "safeguard.reasoning"
    policies_topic: str | None = None
    transactional_id: str | None = None  # exactly_once: stable per instance; default "<group_id>-<hostname>"
    # Static group membership (librdkafka group.instance.id): a member that comes back under the same id
    # within session.timeout.ms gets its partitions back without a rebalance. Stable per pod (the
    # StatefulSet pod name in k8s/base); null: dynamic membership.
    group_instance_id: str | None = Field(None, min_length=1, max_length=249)
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    security: KafkaSecurity = Field(default_factory=KafkaSecurity)
    # Raw librdkafka overrides (may hold secrets such as sasl.password): kept out of repr and dumps.
    librdkafka: dict[str, str | int | float | bool] = Field(default_factory=dict, repr=False, exclude=True)

    @property
    def shadow_labels_topic(self) -> str:
        """Where labels of shadow policies go: ``<labels_topic>.shadow``."""
        return self.labels_topic + ".shadow"


class ReplicaSettings(_Section):
    urls: list[str] = Field(default_factory=lambda: ["http://localhost:8000/v1"], min_length=1)
    model: str = "openai/gpt-oss-safeguard-20b"
    api_key: SecretStr | None = None
    max_inflight_per_replica: int = Field(256, gt=0)
    adaptive_concurrency: bool = True  # AIMD on the replica's vllm:num_requests_waiting, up to the max above
    request_timeout_s: float = Field(300, gt=0)
    max_attempts: int = Field(5, gt=0)
    structured_output: bool = False
    retry_after_max_s: float = Field(5.0, gt=0)  # cap on a replica's Retry-After (429/503) pause
    priority: bool = False  # send vLLM's `priority` (the route's lane); the server needs --scheduling-policy priority

    @field_validator("urls")
    @classmethod
    def _strip_slash(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"replica url must start with http:// or https://, got {url!r}")
        return [u.rstrip("/") for u in urls]


class Route(_Section):
    topic: str | None = None
    kind: Kind | None = None
    policies: list[str] = Field(min_length=1)
    priority: int = Field(1, ge=0)  # the lane: lower is sooner (docs/interventions.md, "Lanes")


class PolicySettings(_Section):
    dir: Path = Path("policies")
    default: list[str] = Field(default_factory=list)
    routes: list[Route] = Field(default_factory=list)
    reasoning_effort: Effort = "low"
    mode: Literal["separate", "combined"] = "separate"
    reload_interval_s: float = Field(2.0, ge=0)  # 0 disables watching policies.dir


class InputSettings(_Section):
    format: Literal["json", "avro"] = "json"
    max_event_bytes: int = Field(1_048_576, gt=0)


class OutputSettings(_Section):
    format: Literal["json", "avro"] = "json"
    reasoning: Literal["inline", "separate", "none"] = "inline"


class SchemaRegistrySettings(_Section):
    url: str | None = None


class BatchingSettings(_Section):
    max_poll_records: int = Field(500, gt=0)
    max_inflight_events: int = Field(4096, gt=0)
    commit_interval_s: float = Field(1.0, gt=0)
    drain_timeout_s: float = Field(30.0, ge=0)
    # Under load the event loop handles replica responses in batches this far apart instead of
    # waking once per response (each wake-up costs ~100 us of CPU on a VM); 0 wakes per response.
    # The adaptive limit keeps enough requests queued at each replica to cover it (room needed:
    # replicas.max_inflight_per_replica a little above the replicas' --max-num-seqs).
    io_batch_ms: float = Field(50.0, ge=0, le=1000)


class CacheSettings(_Section):
    max_entries: int = Field(100_000, ge=0)  # dedupe cache of decided (content, policy version); 0 disables
    max_bytes: int = Field(256 * 2**20, gt=0)  # and at most this much memory (values hold reasoning text)


class PrefilterSettings(_Section):
    dir: Path | None = None  # directory of trained *.prefilter files, watched like policies.dir; null: off
    audit_rate: float = Field(0.02, ge=0, le=1)  # share of would-skip (event, policy) pairs still sent to the model
    # Live recall (docs/cascade.md, "Held live"): the recall the controller holds; null: each file's own target.
    target_recall: float | None = Field(None, ge=0.5, lt=1)
    controller: bool = True  # tighten the threshold when audits show recall below target; false: fixed threshold
    drift_audit_rate: float = Field(1.0, ge=0, le=1)  # audit rate for novel texts while the traffic drifts (1: all)
    evidence_window: int = Field(200_000, ge=1000)  # scored pairs of evidence the live bounds rest on, per policy


ActionName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]


class ActionRule(_Section):
    """One rule of ``actions.rules``: it matches a label when every condition it names holds."""

    policy: str | None = None
    violation: bool | None = None
    category: str | None = None
    confidence: list[Literal["low", "medium", "high"]] | None = Field(None, min_length=1)
    action: ActionName

    def conditions(self) -> list[str]:
        return [name for name in ("policy", "violation", "category", "confidence") if getattr(self, name) is not None]


def _no_rule_shadowed(rules: list[Any], default: str) -> None:
    for i, rule in enumerate(rules[:-1]):
        if not rule.conditions():
            raise ValueError(f"rule {i + 1} ({rule.action}) has no condition, so it matches every event and "
                             f"the {len(rules) - i - 1} rule(s) after it never apply; use {default} or give it "
                             "a condition")


class ProvisionalRule(_Section):
    """One rule of ``actions.provisional.rules``: it matches an event when every condition it names
    holds (``policy``: one of the event's policies still waiting for the model)."""

    policy: str | None = None
    kind: Kind | None = None
    topic: str | None = None
    action: ActionName

    def conditions(self) -> list[str]:
        return [name for name in ("policy", "kind", "topic") if getattr(self, name) is not None]


class ProvisionalSettings(_Section):
    default: ActionName = "allow"  # the action while the reasoner has not answered
    rules: list[ProvisionalRule] = Field(default_factory=list)  # first match over the still-pending policies
    urgent: list[ActionName] = Field(default_factory=lambda: ["hold"])  # these events go first to the replicas
    deadline_s: float | None = Field(None, gt=0)  # no final by then: a `deadline` decision with on_deadline
    on_deadline: ActionName | None = None  # allow: fail open; hold: fail closed

    @model_validator(mode="after")
    def _coherent(self) -> ProvisionalSettings:
        _no_rule_shadowed(self.rules, "actions.provisional.default")
        if (self.deadline_s is None) != (self.on_deadline is None):
            raise ValueError("deadline_s and on_deadline go together: a deadline decision needs both the time "
                             "(deadline_s) and the action it takes then (on_deadline: allow to fail open, hold to "
                             "fail closed)")
        return self


class ActionSettings(_Section):
    topic: str | None = None  # e.g. "safeguard.decisions"; null: no decision events
    default: ActionName = "allow"
    on_error: ActionName = "review"  # one of the event's policies was dead-lettered (and no rule matched)
    rules: list[ActionRule] = Field(default_factory=list)  # first match wins
    provisional: ProvisionalSettings | None = None  # null: decisions only once every label is known

    @model_validator(mode="after")
    def _reachable(self) -> ActionSettings:
        _no_rule_shadowed(self.rules, "actions.default")
        if self.provisional is not None and self.topic is None:
            raise ValueError("actions.provisional needs actions.topic: the topic its decisions go to")
        return self


class EscalationSettings(_Section):
    actor_field: str | None = Field(None, min_length=1)  # metadata key naming the actor; null disables
    policies: list[str] = Field(default_factory=list)  # [] = every policy
    window_s: int = Field(86_400, gt=0)  # tumbling window, by label event time
    threshold: int = Field(3, ge=1)  # violations of one policy by one actor within one window
    topic: str = Field("safeguard.escalations", min_length=1)
    # faust's processing guarantee; exactly_once needs a broker with full transactions (not Tansu)
    processing_guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"


class OspreySettings(_Section):
    """Osprey (ROOST's rules engine): our labels and/or decisions as Osprey actions on its input topic."""

    topic: str | None = Field(None, min_length=1)  # e.g. "osprey.actions_input"; null disables
    action_name: str = Field("safeguard_label", min_length=1, max_length=256)  # what Osprey's rules match on
    source: Literal["labels", "decisions", "both"] = "labels"


class CoopReporter(_Section):
    type_id: str | None = Field(None, min_length=1)  # the Item Type of the service user reports come from
    id: str = Field("safeguard", min_length=1)


class CoopSettings(_Section):
    """Coop (ROOST's review tool): decisions as reports, items with our labels, moderators' decisions back."""

    url: str | None = Field(None, min_length=1)  # Coop's base URL; null disables reports and items
    api_key: SecretStr | None = None  # SAFEGUARD_INTEGRATIONS__COOP__API_KEY; sent as X-API-KEY, never logged
    # (needed by `safeguard coop reports` only: the consumer writes the requests, it never calls Coop)
    report_actions: list[ActionName] = Field(default_factory=lambda: ["review"])
    reporter: CoopReporter = Field(default_factory=CoopReporter)
    item_type_id: str | None = Field(None, min_length=1)  # the Item Type of content items in Coop
    submit_items: bool = False  # also POST every item (our labels in its data) to /api/v1/items/async/
    callback_secret: SecretStr | None = None  # verifies Coop-Signature on action callbacks
    reviews_topic: str = Field("safeguard.reviews", min_length=1)
    policy_map: dict[str, str] = Field(default_factory=dict)  # Coop policy id or name -> our policy id (reviews)
    outbox_topic: str = Field("safeguard.coop.requests", min_length=1)  # written by `run`, sent by `coop reports`
    timeout_s: float = Field(10.0, gt=0)  # one request
    max_retry_after_s: float = Field(60.0, gt=0)  # a longer Retry-After is capped to this

    @field_validator("url")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL (Coop's base URL, e.g. https://coop.example.com)")
        return value.rstrip("/") if value is not None else None

    @model_validator(mode="after")
    def _complete(self) -> CoopSettings:
        if self.url is not None:
            missing = [name for name, value in (("item_type_id", self.item_type_id),
                                                ("reporter.type_id", self.reporter.type_id)) if value is None]
            if missing:
                raise ValueError(f"integrations.coop.url is set, so the reports need {', '.join(missing)} too (the "
                                 "Item Types from Coop's settings page)")
        return self


class IntegrationSettings(_Section):
    osprey: OspreySettings = Field(default_factory=OspreySettings)
    coop: CoopSettings = Field(default_factory=CoopSettings)


class MetricsSettings(_Section):
    port: int = Field(9400, ge=0, le=65535)


class Settings(BaseSettings):
    """The whole configuration tree. Build it with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="SAFEGUARD_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    delivery: Literal["at_least_once", "exactly_once"] = "at_least_once"
    replicas: ReplicaSettings = Field(default_factory=ReplicaSettings)
    policies: PolicySettings = Field(default_factory=PolicySettings)
    input: InputSettings = Field(default_factory=InputSettings)
    output: OutputSettings = Field(default_factory=OutputSettings)
    schema_registry: SchemaRegistrySettings = Field(default_factory=SchemaRegistrySettings)
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    prefilter: PrefilterSettings = Field(default_factory=PrefilterSettings)
    actions: ActionSettings = Field(default_factory=ActionSettings)
    escalation: EscalationSettings = Field(default_factory=EscalationSettings)
    integrations: IntegrationSettings = Field(default_factory=IntegrationSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # First wins: command-line overrides, then the environment, then the YAML file (init kwargs).
        return (_OverrideSource(settings_cls), env_settings, init_settings)


_OVERRIDES: ContextVar[dict[str, Any]] = ContextVar("safeguard_overrides", default={})  # noqa: B039 - never mutated


class _OverrideSource(PydanticBaseSettingsSource):
    """The ``overrides`` of :func:`load_settings` (command-line flags): above the environment."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return _OVERRIDES.get()


def load_settings(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """Read the YAML file (if any), apply ``SAFEGUARD_*`` environment overrides, validate.

    Args:
        path: YAML config file; ``None`` uses defaults plus the environment.
        overrides: values from the command line (``demo``, ``bench``, ``policies publish --topic``):
            above the environment, which is above the file.
        environ: where the ``SAFEGUARD_*`` variables are read, for the unknown-section check
            (default: the process environment).

    Raises:
        ConfigError: the file is missing or unreadable, a ``SAFEGUARD_*`` variable names no section,
            or any key or value is invalid.
    """
    _check_environment(os.environ if environ is None else environ)
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {p}") from exc
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config file {p}: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a YAML mapping at the top level")
        data = loaded
    token = _OVERRIDES.set(overrides or {})
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, path)) from exc
    except SettingsError as exc:  # a SAFEGUARD_* value that is not the JSON a list or mapping needs
        raise ConfigError(f"invalid environment variable: {exc}") from exc
    finally:
        _OVERRIDES.reset(token)


def _check_environment(environ: Mapping[str, str]) -> None:
    prefix = "SAFEGUARD_"
    sections = set(Settings.model_fields)
    for name in environ:
        if name.upper().startswith(prefix):
            section = name[len(prefix):].split("__", 1)[0].lower()
            if section not in sections:
                raise ConfigError(f"environment variable {name}: no configuration section {section!r} "
                                  f"(sections: {', '.join(sorted(sections))})")


def _explain(exc: ValidationError, path: str | Path | None) -> str:
    where = f" in {path}" if path else ""
    lines = [f"invalid configuration{where}:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)
