"""librdkafka's own log lines, through Python logging.

Left alone, librdkafka prints ``%3|1764612345.123|FAIL|rdkafka#consumer-1| ...`` lines straight to
stderr, one per retry, outside every log handler and format. Every client this package creates
passes :data:`LIBRDKAFKA_LOG` as its ``logger`` instead: lines arrive on the ``streams.librdkafka``
logger as ``fac=FAIL client=rdkafka#consumer-1 ...``, at most one per client and facility every
``interval_s`` (librdkafka retries a lost broker every second and says so each time).
"""

from __future__ import annotations

import logging

from streams.ops.logutil import RateLimitedLog


class LibrdkafkaLog:
    """The ``logger`` object confluent-kafka calls as ``log(level, "%s [%s] %s", fac, client, message)``."""

    def __init__(self, logger: logging.Logger, interval_s: float = 30.0) -> None:
        self._limited = RateLimitedLog(logger, interval_s)

    def log(self, level: int, fmt: str, *args: object) -> None:
        if len(args) == 3:
            fac, client, message = args
        else:  # another caller's shape: keep the text whole
            fac, client, message = "-", "-", fmt % args if args else fmt
        self._limited.log(level, (client, fac), "librdkafka fac=%s client=%s %s", fac, client, message)


LIBRDKAFKA_LOG = LibrdkafkaLog(logging.getLogger("streams.librdkafka"))
