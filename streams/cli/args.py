"""Argument types the commands share."""

from __future__ import annotations

import argparse


def positive_int(v: str) -> int:
    n = int(v)
    if n <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return n


def positive_float(v: str) -> float:
    x = float(v)
    if x <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return x


def rate(v: str) -> float:
    x = float(v)
    if not 0.0 <= x <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return x


# The local brokers of the demo, the bench and ``safeguard broker`` (built by streams.devtools.broker,
# which a production import must not load: the list lives here).
BROKER_KINDS = ("embedded", "kafka")

# The tiny models of the real vLLM engine (``safeguard engine``, built by streams.devtools.vllm_engine,
# which a production import must not load either).
ENGINE_MODELS = ("llama", "gpt-oss")
