"""What the bench reads off other processes: the replicas' /metrics, a child's CPU time and its
output lines."""

from __future__ import annotations

import os
import select
import time
import urllib.request
from pathlib import Path
from typing import IO

from streams.inference.replicas.client import root_url, sum_samples


def model_requests(urls: list[str]) -> float:
    """Chat completions the replicas have answered so far, summed over replicas (their ``/metrics``)."""
    name = "vllm:e2e_request_latency_seconds_count"
    total = 0.0
    for url in urls:
        with urllib.request.urlopen(root_url(url) + "/metrics", timeout=10) as resp:  # noqa: S310 - our replicas
            total += sum_samples(resp.read().decode(), name).get(name, 0.0)
    return total


def prefix_cache_tokens(urls: list[str]) -> tuple[float, float]:
    """(hits, queries) of the replicas' prefix cache so far, in prompt tokens, summed over replicas."""
    hits = queries = 0.0
    for url in urls:
        with urllib.request.urlopen(root_url(url) + "/metrics", timeout=10) as resp:  # noqa: S310 - our replicas
            sums = sum_samples(resp.read().decode(), _HITS, _QUERIES)
        hits += sums.get(_HITS, 0.0)
        queries += sums.get(_QUERIES, 0.0)
    return hits, queries


_HITS, _QUERIES = "vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total"


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of another process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def read_line(stream: IO[str], deadline: float) -> str:
    """One line from a child's pipe, or "" when it closes or the deadline passes."""
    while (left := deadline - time.monotonic()) > 0:
        if select.select([stream], [], [], left)[0]:
            return stream.readline().strip()
    return ""
