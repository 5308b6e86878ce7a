"""safeguard-streams: label Kafka content streams with gpt-oss-safeguard served by vLLM replicas."""

from __future__ import annotations

__version__ = "0.1.0"
