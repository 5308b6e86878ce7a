"""Coop out: the requests as Coop's schemas take them (tests/fake_coop.py validates them the way Coop's
server does), and the client's retry policy against a Coop that fails in each way it can."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
from pydantic import SecretStr

from streams.config import CoopSettings
from streams.engine.work import Work
from streams.integrations.coop import REASON_LIMIT, REPORT_PATH, CoopClient, CoopRequests, retry_after
from streams.wire.events import ContentEvent
from tests.fake_coop import _ITEMS, _REPORT, FakeCoop

HOSTILE = ['"}], "reporter": {"kind": "admin"', "\u202e\u200b<|start|>system", "💥" * 300, "\x00\x07",
           "a" * 20_000]


def settings(url: str = "http://coop.invalid", **extra) -> CoopSettings:
    return CoopSettings(url=url, api_key=SecretStr("coop-test-key"), item_type_id="content-type",
                        reporter={"type_id": "service-user", "id": "safeguard"}, **extra)


def work(event: ContentEvent) -> Work:
    w = Work(("in", 0), 7, b"k", b"{}", 0.0)
    w.event = event
    return w


def label(policy: str, violation: bool, rationale: str) -> dict:
    return {"policy_id": policy, "policy_version": "1-abc", "violation": violation, "category": "S1" if violation
            else None, "confidence": "high", "rationale": rationale, "label_id": f"l-{policy}"}


def decision(action: str, labels: list[dict]) -> dict:
    return {"decision_id": "d-1", "action": action, "rule": 2, "decided_at": "2026-12-03T09:35:52.123Z",
            "reasons": [{**{k: lab[k] for k in ("policy_id", "policy_version", "violation", "category", "confidence",
                                                 "label_id")}, "decided_by": "model"} for lab in labels]}


@pytest.mark.parametrize("hostile", HOSTILE)
def test_reports_and_items_fit_coops_schemas_whatever_the_content(hostile: str) -> None:
    requests = CoopRequests(settings(submit_items=True))
    labels = [label("spam", True, hostile), label("harassment", False, "fine")]
    for event in (ContentEvent(event_id=f"e-{hostile[:40]}", text=hostile, metadata={"user_id": hostile}),
                  ContentEvent(event_id="c1", kind="chat", messages=[{"role": "user", "content": hostile},
                                                                     {"role": "assistant", "content": "no"}])):
        built = requests.build(work(event), labels, decision("review", labels))
        kinds = [orjson.loads(v)["kind"] for _, v in built]
        assert kinds == ["item", "report"]
        item, report = (orjson.loads(v)["body"] for _, v in built)
        assert not list(_ITEMS.iter_errors({"items": [item]}))
        assert not list(_REPORT.iter_errors(report))
        assert report["reportedItem"]["id"] == event.event_id and report["reporter"]["kind"] == "user"
        assert len(report["reportedForReason"]["reason"]) <= REASON_LIMIT
        assert "spam 1-abc: violation (S1, high)" in report["reportedForReason"]["reason"]
        assert [lab["rationale"] for lab in item["data"]["labels"]][0] == hostile
        if event.kind == "chat":
            assert [t["data"]["text"] for t in report["reportedItemThread"]] == [hostile, "no"]
        keys = [k for k, _ in built]
        assert keys == [f"item/{event.event_id}".encode(), b"report/d-1"]


def test_only_final_decisions_with_a_reported_action_become_reports() -> None:
    requests = CoopRequests(settings())
    event = ContentEvent(event_id="e1", text="hi")
    assert requests.build(work(event), [], decision("allow", [])) == []
    assert requests.build(work(event), [], None) == []
    assert len(requests.build(work(event), [], decision("review", []))) == 1


def test_retry_after_is_read_in_both_forms_and_capped() -> None:
    assert retry_after("3", 60) == 3.0
    assert retry_after("3600", 60) == 60.0
    assert retry_after("-5", 60) == 0.0
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 60, now=1445412470.0) == 10.0
    assert retry_after("soon", 60) is None and retry_after(None, 60) is None and retry_after("nan", 60) is None


@pytest.fixture
def coop():
    fake = FakeCoop().start()
    yield fake
    fake.stop()


def report_body() -> bytes:
    requests = CoopRequests(settings())
    [(_, value)] = requests.build(work(ContentEvent(event_id="e1", text="hi")), [], decision("review", []))
    return orjson.dumps(orjson.loads(value)["body"])


async def send(coop: FakeCoop, **extra) -> tuple[object, float]:
    async with CoopClient(settings(coop.url, **extra)) as client:
        start = time.monotonic()
        answer = await client.send(REPORT_PATH, report_body(), "report d-1")
        return answer, time.monotonic() - start


async def test_a_429_storm_is_waited_out_honouring_retry_after(coop) -> None:
    coop.storm, coop.storm_retry_after = 3, "0.3"
    answer, took = await send(coop)
    assert answer.status == 201 and len(coop.reports) == 1
    assert took >= 0.9  # three waits of Retry-After
    assert coop.requests[("/api/v1/report", 429)] == 3 and coop.violations == []


async def test_a_retry_after_beyond_the_cap_is_capped(coop) -> None:
    coop.storm, coop.storm_retry_after = 1, "86400"
    answer, took = await send(coop, max_retry_after_s=0.2)
    assert answer.status == 201 and took < 5


async def test_an_outage_is_waited_out_and_nothing_is_sent_twice(coop) -> None:
    coop.outage = True

    async def end_outage() -> None:
        while coop.retries_in_outage < 3:
            await asyncio.sleep(0.05)
        coop.outage = False
    ender = asyncio.create_task(end_outage())
    answer, _ = await send(coop)
    await ender
    assert answer.status == 201 and len(coop.reports) == 1


async def test_a_refused_request_is_answered_with_coops_error(coop) -> None:
    coop.reject_text = "hi"
    answer, _ = await send(coop)
    assert answer.status == 400 and "data-invalid-for-item-type" in answer.body and coop.reports == []


async def test_a_wrong_api_key_is_retried_not_dead_lettered_and_stop_ends_the_wait(coop) -> None:
    stopping = asyncio.Event()
    wrong = settings(coop.url)
    wrong = wrong.model_copy(update={"api_key": SecretStr("nope")})
    async with CoopClient(wrong, stopping=stopping) as client:
        task = asyncio.create_task(client.send(REPORT_PATH, report_body(), "report d-1"))
        while coop.requests[("/api/v1/report", 401)] < 2:
            await asyncio.sleep(0.05)
        stopping.set()
        assert await task is None  # not done: sent again after the restart
    assert coop.reports == []


async def test_coop_unreachable_is_retried(unused_tcp_port) -> None:
    stopping = asyncio.Event()
    async with CoopClient(settings(f"http://127.0.0.1:{unused_tcp_port}"), stopping=stopping) as client:
        task = asyncio.create_task(client.send(REPORT_PATH, report_body(), "report d-1"))
        while client.retries < 2:
            await asyncio.sleep(0.05)
        assert client.waiting_since is not None
        stopping.set()
        assert await task is None


def test_the_api_key_is_never_in_a_repr_or_log(caplog) -> None:
    s = settings()
    assert "coop-test-key" not in repr(s) and "coop-test-key" not in str(s.model_dump())


async def test_a_wrong_url_or_a_redirect_is_retried_never_followed_nor_dead_lettered(coop) -> None:
    from aiohttp import web

    hits: list[str] = []

    async def redirect(request: web.Request) -> web.Response:
        hits.append(request.headers.get("X-API-KEY", ""))
        raise web.HTTPFound(coop.url + "/api/v1/report")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", redirect)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    elsewhere = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        for url in (coop.url + "/wrong-base", elsewhere):
            stopping = asyncio.Event()
            async with CoopClient(settings(url), stopping=stopping) as client:
                task = asyncio.create_task(client.send(REPORT_PATH, report_body(), "report d-1"))
                while client.retries < 2:
                    await asyncio.sleep(0.05)
                stopping.set()
                assert await task is None  # waits (a configuration to fix), never a dead letter
    finally:
        await runner.cleanup()
    assert coop.reports == [] and hits  # the redirect was not followed: the key never reached Coop from there
