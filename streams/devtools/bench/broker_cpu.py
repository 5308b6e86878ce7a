"""What each local broker costs per record, measured apart from the consumer (docs/performance.md,
"On Apache Kafka and on the embedded broker").

``python -m streams.devtools.bench.broker_cpu [embedded] [kafka]``: on each broker, produce N records
of 300 bytes, then run the raw batch consume -> produce loop twice; prints the rate, the client's
CPU per record and the broker process's CPU per record (from ``/proc/<pid>/stat``, Linux only).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid

from confluent_kafka import Producer

from streams.devtools.broker import create_topics, local_broker, reader_from_beginning

TICK = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()  # noqa: SIM115, PTH123
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def _send(p: Producer, topic: str, key: bytes | None, value: bytes | None) -> None:
    while True:
        try:
            p.produce(topic, key=key, value=value)
            return
        except BufferError:
            p.poll(0.01)


def measure(kind: str, n: int, rounds: int = 2) -> list[str]:
    lines = []
    with local_broker(kind) as broker:
        pid = broker.pid
        assert pid is not None
        source, sink = f"in-{uuid.uuid4().hex[:6]}", f"out-{uuid.uuid4().hex[:6]}"
        create_topics(broker.bootstrap, {source: 1, sink: 1})
        p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
        b0, t0 = process_cpu_s(pid), time.monotonic()
        for i in range(n):
            _send(p, source, str(i).encode(), b"x" * 300)
            p.poll(0)
        p.flush(60)
        lines.append(f"{kind} {broker.version}: produce {n / (time.monotonic() - t0):,.0f} records/s, broker "
                     f"{(process_cpu_s(pid) - b0) / n * 1e6:.1f} us CPU per record")
        for r in range(rounds):
            c = reader_from_beginning(broker.bootstrap, [source])
            q = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
            done, b0, c0, start = 0, process_cpu_s(pid), time.process_time(), 0.0
            while done < n:
                msgs = c.consume(500, 1.0)
                if msgs and not start:
                    start = time.monotonic()
                for m in msgs:
                    if m.error() is None:
                        _send(q, sink, m.key(), m.value())
                        done += 1
                q.poll(0)
            q.flush(60)
            wall = time.monotonic() - start
            lines.append(f"{kind} {broker.version}: raw loop round {r}: {n / wall:,.0f} records/s, client "
                         f"{(time.process_time() - c0) / n * 1e6:.1f} us, broker "
                         f"{(process_cpu_s(pid) - b0) / n * 1e6:.1f} us CPU per record")
            c.close()
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("kinds", nargs="*", default=["embedded", "kafka"])
    ap.add_argument("--records", type=int, default=100_000)
    args = ap.parse_args(argv)
    for kind in args.kinds:
        for line in measure(kind, args.records):
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
