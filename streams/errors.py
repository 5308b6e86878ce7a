"""Error tree. Branch by what the caller does next.

```
SafeguardError
├── RetryableError      timeouts, 5xx, refused, overload: retry on another replica, never dead-letter
├── PoisonError         bad input or unusable model output: dead-letter with a stable ``error_type``
└── FatalError          bad config, fatal Kafka error: exit non-zero
    └── ConfigError
```
Per-message failures travel as data (a result with a reason); exceptions are for infrastructure.
"""

from __future__ import annotations

from enum import StrEnum


class SafeguardError(Exception):
    """Base of every error this package raises on purpose."""


class RetryableError(SafeguardError):
    """A transient infrastructure failure; the same request may succeed elsewhere or later.

    Attributes:
        replica: base URL of the replica that failed, if any.
        retry_after: seconds the server asked us to wait (``Retry-After``), if it said.
    """

    def __init__(self, message: str, *, replica: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.replica = replica
        self.retry_after = retry_after


class ErrorType(StrEnum):
    """Why an event (or one policy's evaluation of it) was dead-lettered: the closed set of
    ``error_type`` values on dead letters and on ``safeguard_dead_letters_total``."""

    INVALID_JSON = "invalid_json"  # not JSON, or not UTF-8
    INVALID_AVRO = "invalid_avro"  # not Avro in the Schema Registry wire format
    SCHEMA_VIOLATION = "schema_violation"  # readable, but not a content event (or a tombstone)
    TOO_LARGE = "too_large"  # over input.max_event_bytes
    UNKNOWN_POLICY = "unknown_policy"  # the event names a policy that is not loaded
    NO_POLICY = "no_policy"  # no route matches and policies.default is empty
    UNPARSEABLE_OUTPUT = "unparseable_output"  # the model's final answer is not a verdict (after retries)
    TRUNCATED_REASONING = "truncated_reasoning"  # generation hit the length limit before answering (after retries)
    REQUEST_REJECTED = "request_rejected"  # the replica refused the request itself (HTTP 4xx, e.g. too long)
    INTERNAL_ERROR = "internal_error"  # a bug met while handling this event; the partition keeps going
    INTEGRATION_REJECTED = "integration_rejected"  # another tool (Coop) refused the request: its answer is kept


class PoisonError(SafeguardError):
    """Input or output that will never succeed as is; it goes to the dead-letter topic.

    Attributes:
        error_type: the stable machine name (:class:`ErrorType`).
    """

    def __init__(self, error_type: ErrorType, message: str) -> None:
        super().__init__(message)
        self.error_type = ErrorType(error_type)


class FatalError(SafeguardError):
    """The process cannot go on (bad configuration, fatal Kafka error)."""


class ConfigError(FatalError):
    """Configuration is invalid or a referenced file is missing."""
