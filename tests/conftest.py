from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def policies_dir() -> Path:
    return ROOT / "policies"


def pytest_report_header(config: pytest.Config) -> str:
    """The broker the integration tests run on, on the run's first lines (CI logs name it)."""
    from tests.integration.conftest import choose_broker, describe_broker

    return f"broker: {describe_broker(choose_broker())}"
