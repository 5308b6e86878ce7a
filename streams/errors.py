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


class PoisonError(SafeguardError):
    """Input or output that will never succeed as is; it goes to the dead-letter topic.

    Attributes:
        error_type: stable machine name (``invalid_json``, ``schema_violation``, ``too_large``,
            ``unparseable_output``, ``truncated_reasoning``, ``request_rejected``, ...).
    """

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


class FatalError(SafeguardError):
    """The process cannot go on (bad configuration, fatal Kafka error)."""


class ConfigError(FatalError):
    """Configuration is invalid or a referenced file is missing."""
