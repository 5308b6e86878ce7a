"""The bench's ratios: each mode against the others, computed within one run (docs/performance.md)."""

from __future__ import annotations

from typing import Any


def ratios(out: dict[str, Any]) -> dict[str, float | None]:
    """The pipeline against each other mode that ran (and ``utilisation`` into ``pipeline``)."""
    found: dict[str, float | None] = {}
    p, i = out.get("pipeline"), out.get("ideal")
    if p and i:
        p["utilisation"] = round(p["events_per_s"] / i["events_per_s"], 3)
        found.update(vs_ideal=p["utilisation"], p99_vs_ideal=ratio(p["p99_s"], i["p99_s"], 3),
                      e2e_p99_vs_ideal=ratio(p["e2e_p99_s"], i["e2e_p99_s"], 3))
        if "pipeline_order" in i:  # like for like: the same requests reach the replica in the same order
            same = i["pipeline_order"]
            found.update(vs_ideal_same_order=ratio(p["events_per_s"], same["events_per_s"], 3),
                          steady_vs_ideal_same_order=ratio(p["steady_events_per_s"], same["steady_events_per_s"], 3),
                          e2e_p99_vs_ideal_same_order=ratio(p["e2e_p99_s"], same["e2e_p99_s"], 3))
    if p and "naive" in out:
        found["vs_naive"] = ratio(p["events_per_s"], out["naive"]["events_per_s"], 1)
    if p and "faust" in out:
        found["vs_faust"] = ratio(p["events_per_s"], out["faust"]["events_per_s"], 2)
    if "passthrough" in out:
        found["passthrough_vs_raw"] = ratio(out["passthrough"]["events_per_s"],
                                              out["passthrough"]["raw_events_per_s"], 3)
    return found


def per_event(cpu_s: dict[str, float], n: int) -> dict[str, float]:
    return {kind: round(seconds / n * 1e6, 1) for kind, seconds in sorted(cpu_s.items())}


def ratio(a: float, b: float, digits: int) -> float | None:
    return round(a / b, digits) if b else None
