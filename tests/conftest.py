from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The engine tier (the real vLLM server: minutes to prepare, gigabytes of memory) runs only when asked
# for by path (make test-engine: pytest tests/engine) or with STREAMS_ENGINE_TESTS=1, never as part of
# a plain `pytest tests`.
collect_ignore_glob = [] if os.environ.get("STREAMS_ENGINE_TESTS") == "1" else ["engine/*"]


@pytest.fixture
def policies_dir() -> Path:
    return ROOT / "policies"


def pytest_report_header(config: pytest.Config) -> str:
    """The broker the integration tests run on, on the run's first lines (CI logs name it)."""
    from tests.integration.conftest import choose_broker, describe_broker

    return f"broker: {describe_broker(choose_broker())}"
