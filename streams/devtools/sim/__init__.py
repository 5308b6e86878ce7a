"""vLLM-compatible replica simulator: the model's API, metrics and batching behaviour without a GPU."""

from __future__ import annotations
