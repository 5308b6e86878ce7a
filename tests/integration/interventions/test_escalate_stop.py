"""``safeguard escalate`` ends on SIGTERM even when its broker is gone: faust's stop waits for ever
on a broker that never answers, so the service bounds it (``STOP_BOUND_S``) and exits 1."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from streams.devtools.apache_kafka import KafkaBroker
from streams.devtools.broker import create_topics
from streams.interventions.escalate import STOP_BOUND_S
from tests.integration.helpers import ConsumerProcess, produce, write_config
from tests.integration.interventions.test_escalation import label


def test_sigterm_ends_the_service_when_the_broker_is_gone(tmp_path: Path) -> None:
    broker = KafkaBroker().start()
    try:
        names = {k: f"{k}-stop" for k in ("input", "labels", "dlq", "reasoning")}
        create_topics(broker.bootstrap, {names["labels"]: 3, "esc-stop": 1})
        path = write_config(tmp_path, broker.bootstrap, names, ["http://127.0.0.1:9/v1"],
                            escalation={"actor_field": "author_id", "threshold": 3, "topic": "esc-stop"})
        produce(broker.bootstrap, names["labels"], [label(f"a{i}", n) for i in range(50) for n in range(3)])
        app = ConsumerProcess(path, tmp_path / "escalate.log", "escalate").start()
        deadline = time.monotonic() + 180  # a bound on a broken run, not the thing checked
        while "escalation actor=" not in app.log():
            assert app.alive() and time.monotonic() < deadline, app.log()[-3000:]
            time.sleep(0.2)
        assert broker.pid is not None
        os.kill(broker.pid, signal.SIGKILL)  # gone without a word, mid-stream
        time.sleep(2)
        assert app.proc is not None
        app.proc.send_signal(signal.SIGTERM)
        code = app.proc.wait(STOP_BOUND_S + 10 + 120)  # the bound, the lingering-thread grace, a margin
    finally:
        broker.stop()
    log = app.log()
    assert "SIGTERM: stopping" in log, log[-3000:]
    assert code == 0 or "did not stop within" in log or "threads still running" in log, (code, log[-3000:])
    print(f"\nexit {code} after SIGTERM with the broker gone")
