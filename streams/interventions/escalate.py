"""``safeguard escalate``: repeat offenders, counted per actor in faust-streaming tables.

Two agents in one faust app (id ``<kafka.group_id>-escalation``):

1. ``route`` reads ``kafka.labels_topic`` and forwards each violating label of an escalated policy
   whose content event named an actor (``metadata[escalation.actor_field]``) as a small ticket to
   the internal topic ``<app id>-by-actor``, keyed by the actor: the repartition that puts every
   label of one actor on one partition, whatever key the labels had.
2. ``tally`` reads that topic and counts distinct violating labels per (actor, policy) in a
   tumbling windowed table (``escalation.window_s``, by the label's ``labeled_at``) whose changelog
   topic faust restores before the agent sees a ticket. When a tally reaches
   ``escalation.threshold`` it produces one escalation on ``escalation.topic`` (key: the actor),
   waits for the broker's acknowledgement, and only then marks the tally escalated.

Exactly one escalation per (actor, policy, window). Under ``escalation.processing_guarantee``
``at_least_once`` (the default):

- a label read twice (a restart, a rebalance, a duplicate label) counts once: a tally holds the
  label ids it counted;
- every write a label causes is on the broker before faust may consider the label processed: the
  forwarded ticket is awaited until acknowledged, and so is the tally's changelog record (its
  send's future, captured from the table, awaited after each write). faust's own flushes are not
  enough: its buffer's flush gives up after 0.1 s without progress, and a failed send is only
  logged. What was not committed is read again, and counts once;
- the escalation is acknowledged before its tally says "escalated". A crash between the two reads
  the label again and escalates again under the same deterministic ``escalation_id`` (the only
  possible duplicate, and one a reader dedupes by id); a crash before the escalation was
  acknowledged leaves the tally unescalated, so it is never lost.

Under ``exactly_once`` the same steps run inside faust's transactions (one transactional producer
per partition of the assignment, read_committed consumers): a label's ticket, its tally's changelog
record and its escalation commit with the label's offset or not at all, so a read_committed reader
of the escalation topic sees each escalation once across crashes and restarts (across rebalances
among several members faust can still commit a few twice: docs/interventions.md). faust needs
three things for that which it does not do by itself: the app must count as a worker
(``in_worker``) or the guarantee is silently ignored; a record must join the transaction of the
partition whose label caused it (``faust_fixes``); and a commit must never fall between a label's
writes and its ack (the commit gate, :mod:`streams.interventions.gate`). A broker that refuses
aiokafka's transactional producer stops the service at start-up.

Each write is acknowledged before the next (a broker round trip per violating label with an actor,
never per label), so each changelog batch holds one record: recovery stays exact on brokers that
report a partition's end offset as the start of its last batch plus one (Tansu 0.6, the embedded
broker), and docs/interventions.md has what confirming writes at the commit instead did on Apache
Kafka.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import faust
from prometheus_client import CollectorRegistry, Counter, Gauge

from streams.config import Settings
from streams.errors import ConfigError, FatalError
from streams.interventions import faust_fixes
from streams.interventions.cluster import broker_settings, layout, wait_listed
from streams.interventions.gate import CommitGate
from streams.interventions.progress import Progress
from streams.interventions.tally import count, escalated, event_time, rfc3339, window_start
from streams.kafka.admin import require_topics
from streams.ops.service import serving
from streams.wire.catalogue import ESCALATION, output_topics
from streams.wire.codec import Encoder, label_reader
from streams.wire.events import escalation_id, utc_now

log = logging.getLogger(__name__)

STOP_BOUND_S = 60.0  # how long a stop may take to drain and commit before the service gives up (exit 1)

faust_fixes.apply()  # before any app is built: docs/interventions.md


class Ticket(faust.Record, serializer="json"):
    """One violating label, as the tally needs it (the repartition topic's value)."""

    actor: str
    policy_id: str
    label_id: str
    event_id: str
    ts: float  # the label's labeled_at, seconds since the epoch: the window's clock


class EscalationMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.labels = Counter("safeguard_escalation_labels", "Labels the escalation service read, by outcome: "
                              "counted, duplicate (already counted), ignored (not a violation, no actor, another "
                              "policy), invalid (not a label).", ["outcome"], registry=registry)
        self.escalations = Counter("safeguard_escalations", "Escalations acknowledged by the broker.", ["policy"],
                                   registry=registry)
        self.last_label = Gauge("safeguard_escalation_last_label_timestamp_seconds",
                                "Unix time of the last label the service read (stalls show here).",
                                registry=registry)
        self.ready = Gauge("safeguard_ready", "1 while /readyz answers ready (tables restored, consuming), else 0.",
                           registry=registry)


class EscalationApp:
    """The faust app and its two agents, built from the settings (see the module doc)."""

    def __init__(self, settings: Settings, metrics: EscalationMetrics, *, datadir: str) -> None:
        e, k = settings.escalation, settings.kafka
        if not e.actor_field:
            raise ConfigError("escalation.actor_field is not set: name the metadata key that identifies the actor "
                              "(author_id, seller_id, ...)")
        self.settings, self.metrics = settings, metrics
        self.partitions, replication = layout(settings, k.labels_topic)
        self.app_id = f"{k.group_id}-escalation"
        self.app = faust.App(
            self.app_id, store="memory://", web_enabled=False, topic_partitions=self.partitions,
            topic_replication_factor=replication, consumer_auto_offset_reset="earliest",
            processing_guarantee=e.processing_guarantee, datadir=datadir, table_standby_replicas=0,
            stream_wait_empty=True, **broker_settings(settings))
        self.app.in_worker = True  # faust honours processing_guarantee only in a worker: this is one
        self.labels = self.app.topic(k.labels_topic, key_serializer="raw", value_serializer="raw")
        self.by_actor = self.app.topic(f"{self.app_id}-by-actor", key_serializer="raw", value_type=Ticket,
                                       partitions=self.partitions, internal=True)
        self.out_topic = ESCALATION.topic(settings)
        self.out = self.app.topic(self.out_topic, key_serializer="raw", value_serializer="raw")
        self.tallies = self.app.Table("tallies", default=dict, partitions=self.partitions).tumbling(
            e.window_s, expires=2 * e.window_s).relative_to_field(Ticket.ts)  # type: ignore[arg-type]
        self._changelog_sent: list[Any] = []  # the table's writes, captured from its sends
        table = self.tallies.table
        send_changelog = table.send_changelog

        def sent_changelog(*args: Any, **kwargs: Any) -> Any:
            fut = send_changelog(*args, **kwargs)
            self._changelog_sent.append(fut)
            return fut

        table.send_changelog = sent_changelog  # type: ignore[method-assign]
        self._gate = CommitGate()
        consumer: Any = self.app.consumer
        force_commit = consumer.force_commit

        async def commit_between_labels(*args: Any, **kwargs: Any) -> bool:
            async with self._gate.commit():
                return bool(await force_commit(*args, **kwargs))

        consumer.force_commit = commit_between_labels
        if self.app.in_transaction:
            self.app.on_partitions_revoked.connect(self._restart_from_committed)
        self._decode = label_reader(settings, k.labels_topic)
        self._encode = Encoder(settings.output, settings.schema_registry).encode
        self._policies = set(e.policies)
        self.last_label = 0.0  # time.monotonic() of the last label read; 0: none yet
        self.app.agent(self.labels, name="route")(self._route)
        self.app.agent(self.by_actor, name="tally")(self._tally)

    async def _restart_from_committed(self, _app: Any, /, *args: Any, signal: Any, **_: Any) -> None:
        """Exactly-once, at every rebalance (faust's revocation, once the agents are idle): abort every
        open transaction and forget the tables, so the member starts its new assignment from what is
        committed. faust keeps neither of these consistent across a rebalance by itself: it forgets
        the acknowledged offsets of every partition before its revocation commit (so that commit
        commits nothing), stops the producers of partitions that move without ending their
        transactions (the next owner aborts them), and keeps the tables' in-memory state, counts that
        only the aborted or never-committed writes hold. Seen as escalations lost (a321 in one run of
        the rebalance test; a164 and a166 in another) and committed twice. Now the tables are restored
        from the committed changelog after each rebalance and the inputs are read again from the
        committed offsets, in fresh transactions: as after a crash, at the price of replaying the
        changelog and what was processed since the last commit (at most a commit interval)."""
        producer: Any = self.app.producer
        async with self._gate.commit():  # no commit in between, no label half-way through its writes
            for tid, txn in list(producer._transaction_producers.items()):
                async with producer._trn_locks[tid]:
                    if txn._txn_manager.is_in_transaction():
                        await txn.abort_transaction()
            store: Any = self.tallies.table.data  # faust's in-memory store
            store.data.clear()
            store._key_partition.clear()
            tables: Any = self.app.tables
            tables.recovery.active_offsets.clear()  # the next recovery replays each changelog from its start
        if args and args[0]:  # the revoked partitions (none at the first join)
            log.info("rebalance (exactly-once): open transactions aborted and tables dropped; the new assignment "
                     "starts from the committed changelog and offsets (%d partitions revoked)", len(args[0]))

    def ticket(self, value: bytes | None) -> Ticket | None:
        """The ticket for one label record, or None (counted in the metrics by outcome)."""
        outcome = self.metrics.labels.labels
        try:
            doc = self._decode(value) if value is not None else None
        except Exception:  # noqa: BLE001 - a record that is not a label is skipped, not fatal
            doc = None
        if not isinstance(doc, dict) or "label_id" not in doc:
            outcome("invalid").inc()
            return None
        actor = (doc.get("metadata") or {}).get(self.settings.escalation.actor_field)
        if not doc.get("violation") or not actor or (self._policies and doc.get("policy_id") not in self._policies):
            outcome("ignored").inc()
            return None
        try:
            ts = event_time(doc["labeled_at"])
        except (KeyError, TypeError, ValueError):
            outcome("invalid").inc()
            return None
        return Ticket(actor=str(actor), policy_id=doc["policy_id"], label_id=doc["label_id"],
                      event_id=doc["event_id"], ts=ts)

    @contextlib.asynccontextmanager
    async def _writes_of(self, stream: Any) -> AsyncIterator[None]:
        """The block makes the writes the stream's current record causes; the record is acked at
        its end, and no commit falls in between (the gate: docs/interventions.md)."""
        event = stream.current_event
        async with self._gate.step():
            yield
            await stream.ack(event)

    async def _route(self, stream: Any) -> None:
        async for value in stream:
            self.last_label = time.monotonic()
            self.metrics.last_label.set(time.time())
            ticket = self.ticket(value)
            if ticket is not None:
                async with self._writes_of(stream):
                    await self._confirmed([await self.by_actor.send(key=ticket.actor.encode(), value=ticket)])

    async def _tally(self, stream: Any) -> None:
        e = self.settings.escalation
        async for ticket in stream:
            key = f"{ticket.actor}\x1f{ticket.policy_id}"
            counted = count(self.tallies[key].value(), label_id=ticket.label_id, event_id=ticket.event_id,
                            threshold=e.threshold)
            if not counted.changed:
                self.metrics.labels.labels("duplicate").inc()
                continue
            self.metrics.labels.labels("counted").inc()
            async with self._writes_of(stream):
                if counted.reached:
                    await self._escalate(ticket, counted.state)
                    self.tallies[key] = escalated(counted.state)
                else:
                    self.tallies[key] = counted.state
                await self._changelog_written()

    async def _changelog_written(self) -> None:
        sent, self._changelog_sent = self._changelog_sent, []
        await self._confirmed(sent)

    async def _confirmed(self, sent: list[Any]) -> None:
        """Wait until the broker has acknowledged each write (its send's own future). faust's
        ``producer.flush()`` is not enough: its buffer stops waiting after 0.1 s without a message
        sent, and a record its sender task already holds is in neither the buffer nor the client yet,
        so under load the flush returned with a table write still unsent, and a SIGKILL lost a tally
        whose label was committed. A failed write raises here: the label is not acked and the app
        stops."""
        if sent:
            await self.app.producer.flush()  # hand what is buffered to the client now rather than later
        for fut in sent:
            await fut  # resolved by the client's delivery report: on the broker

    async def _escalate(self, ticket: Ticket, state: dict[str, Any]) -> None:
        e = self.settings.escalation
        start = window_start(ticket.ts, e.window_s)
        doc = {"schema_version": 1, "escalation_id": escalation_id(ticket.actor, ticket.policy_id, start),
               "actor": ticket.actor, "policy_id": ticket.policy_id, "count": len(state["ids"]),
               "threshold": e.threshold, "window_start": rfc3339(start), "window_end": rfc3339(start + e.window_s),
               "event_ids": state["events"], "escalated_at": utc_now()}
        value = self._encode(doc, ESCALATION.schema, self.out_topic)
        sent = await self.out.send(key=ticket.actor.encode(), value=value)
        await sent  # acknowledged by the broker before the tally is marked escalated
        self.metrics.escalations.labels(ticket.policy_id).inc()
        log.info("escalation actor=%s policy=%s window_start=%s count=%d id=%s", ticket.actor, ticket.policy_id,
                 doc["window_start"], doc["count"], doc["escalation_id"])

    async def prepare(self) -> None:
        """Before the app starts: under exactly-once, check that the broker grants a transactional
        producer (a clear error rather than faust's warnings); then create the internal topics and
        wait until the cluster's metadata lists them. faust creates them only as the group forms, and
        a leader whose metadata did not show the repartition topic yet left it unassigned until the
        next metadata refresh (minutes) on Apache Kafka: labels forwarded, none counted."""
        from aiokafka.errors import KafkaError

        if self.app.in_transaction:
            producer: Any = self.app.producer  # faust's own factory: the settings its transactional producers get
            probe = producer._new_producer(transactional_id=f"{self.app_id}-startup-check")
            try:
                await probe.start()
            except KafkaError as exc:
                raise FatalError(f"escalation.processing_guarantee is exactly_once but the broker refused a "
                                 f"transactional producer ({exc!r}); use at_least_once with this broker (the "
                                 "tallies are idempotent, a crash can repeat an escalation under its id) or a "
                                 "broker with Kafka transactions") from exc
            finally:
                await probe.stop()
        await self.app.producer.maybe_start()
        topics = [self.by_actor, self.tallies.table.changelog_topic]
        for topic in topics:
            await topic.maybe_declare()
        names = [t.get_topic_name() for t in topics]
        await asyncio.get_running_loop().run_in_executor(None, lambda: wait_listed(self.settings, names,
                                                                                   self.partitions))

    @property
    def ready(self) -> bool:
        """Recovered (the tables restored from their changelogs) and consuming."""
        recovery = getattr(self.app.tables, "recovery", None)
        return bool(recovery is not None and recovery.completed.is_set() and self.app.consumer is not None)


async def run_escalation(settings: Settings, *, until_idle: float | None = None,
                         registry: CollectorRegistry | None = None,
                         on_app: Callable[[EscalationApp], None] | None = None) -> None:
    """Run the escalation service until SIGTERM/SIGINT, or until no label arrived for
    ``until_idle`` seconds after recovery (then everything read is committed)."""
    e, k = settings.escalation, settings.kafka
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, lambda: require_topics(k, [k.labels_topic, *output_topics(settings,
                                                                                              writer="escalation")]))
    metrics = EscalationMetrics(registry or CollectorRegistry())
    stop = asyncio.Event()
    with tempfile.TemporaryDirectory(prefix="safeguard-escalate-") as datadir:
        service = EscalationApp(settings, metrics, datadir=datadir)
        if on_app is not None:
            on_app(service)
        metrics.ready.set_function(lambda: float(service.ready))
        async with contextlib.AsyncExitStack() as stack:  # undone in reverse, whatever raises
            await stack.enter_async_context(serving(stop.set, port=settings.metrics.port, registry=metrics.registry,
                                                    ready=lambda: service.ready))
            log.info("escalation service starting app=%s labels_topic=%s partitions=%d actor_field=%s threshold=%d "
                     "window_s=%d topic=%s", service.app_id, k.labels_topic, service.partitions, e.actor_field,
                     e.threshold, e.window_s, e.topic)
            app = service.app
            progress = Progress(settings, service.app_id, [k.labels_topic, service.by_actor.get_topic_name()],
                                isolation="read_committed" if app.in_transaction else "read_uncommitted")
            stack.callback(progress.close)
            stack.push_async_callback(_stop_within, app, STOP_BOUND_S)  # drains the streams, then commits
            await service.prepare()
            await app.start()
            await _until_stopped(service, progress, stop, until_idle)


async def _stop_within(app: faust.App, bound_s: float) -> None:
    """faust's stop waits for the labels in flight and commits. With the broker gone it waits for
    ever (a send that is never acknowledged holds the commit, and the stop does not even end when
    cancelled): SIGTERM then never ended the process. Past ``bound_s`` the service logs why and exits
    1 at once; what it read and did not commit is read again by the next member, as after a crash."""
    stopping = asyncio.ensure_future(app.stop())
    done, _ = await asyncio.wait({stopping}, timeout=bound_s)
    if done:
        stopping.result()
        return
    log.error("the escalation app did not stop within %.0fs (is the broker reachable? see the log above): "
              "exiting 1 without committing; uncommitted labels are read again by the next member", bound_s)
    logging.shutdown()
    os._exit(1)


async def _until_stopped(service: EscalationApp, progress: Progress, stop: asyncio.Event,
                         until_idle: float | None) -> None:
    """Return once ``stop`` is set, or idle for ``until_idle`` with everything read committed;
    raise FatalError if the faust app stops by itself."""
    loop = asyncio.get_running_loop()
    app = service.app
    recovered_at: float | None = None
    reported = 0.0
    while not stop.is_set():
        if app.should_stop or app.crashed:
            raise FatalError(f"the escalation app stopped: {app.crash_reason or 'see the log'}")
        if recovered_at is None and service.ready:
            recovered_at = time.monotonic()
            log.info("escalation service ready (tables recovered)")
        if until_idle is not None and recovered_at is not None:
            since = time.monotonic() - max(recovered_at, service.last_label)
            if since >= until_idle:
                behind = await loop.run_in_executor(None, progress.behind)
                if not behind:
                    log.info("idle for %.1fs with everything read committed: exiting", until_idle)
                    return
                if time.monotonic() - reported >= 10:  # a replay that does not end says why
                    reported = time.monotonic()
                    log.info("idle for %.0fs but not caught up (committed/high watermark): %s", since,
                             ", ".join(behind))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.2)
