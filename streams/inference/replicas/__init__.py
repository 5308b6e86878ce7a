"""Talking to vLLM replicas over the OpenAI-compatible HTTP API: one client per replica, a pool
that routes, retries and tracks health."""

from __future__ import annotations

from streams.inference.replicas.client import ChatResult, ReplicaClient
from streams.inference.replicas.pool import ReplicaPool

__all__ = ["ChatResult", "ReplicaClient", "ReplicaPool"]
