"""The cascade mode's figures, per phase of its stream, read off the labels one consumer run wrote
(the simulator counts requests only in total; a label decided by the model is one request).

Per phase: ``events``, ``violations`` (the model's answers), ``recall_vs_model`` (the share of those
the labels flag), ``model_requests_per_event`` (labels with ``decided_by: model``, audits
included), ``decided_by_prefilter``, ``let_through`` (violations the prefilter decided alone),
``audited``; on its safe events, ``safe_pass_rate`` (the share sent to the model) and
``safe_flagged`` (the share whose label carries ``prefilter_flags``: an evasion signal seen in
safe text). The adversarial phase adds ``let_through_by_trick`` (per obfuscation trick: violations
using it, and those the prefilter decided).
"""

from __future__ import annotations

from typing import Any

from streams.devtools.bench.workload import PHASES, Truth


def figures(labels: dict[str, dict[str, Any]], truth: dict[str, Truth]) -> dict[str, dict[str, Any]]:
    """Per-phase figures from ``labels`` (event id -> label document) of the events in ``truth``."""
    out: dict[str, dict[str, Any]] = {}
    for phase in PHASES:
        ids = [e for e, t in truth.items() if t.phase == phase]
        if ids:
            out[phase] = _phase([(truth[e], labels[e]) for e in ids])
    return out


def headline(phases: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """The ``cascade`` figures DESIGN 13.1 names, from :func:`figures` of the run with the controller
    (``phases["controller_on"]``) and without (``phases["controller_off"]``): the steady phase's at
    the top level, ``shifted``, ``shifted_controller_off`` and ``adversarial`` (its
    ``controller_off`` inside)."""
    on, off = phases["controller_on"], phases["controller_off"]
    steady = on["steady"]
    return {"events": steady["events"], "violation_share": round(steady["violations"] / steady["events"], 3),
            **{key: steady[key] for key in ("model_requests_per_event", "recall_vs_model", "decided_by_prefilter",
                                            "audited", "let_through")},
            "shifted": _contract(on["shifted"], "on"), "shifted_controller_off": _contract(off["shifted"], "off"),
            "adversarial": {**_contract(on["adversarial"], "on"),
                            "controller_off": _contract(off["adversarial"], "off")}}


def _contract(phase: dict[str, Any], controller: str) -> dict[str, Any]:
    return {**phase, "controller": controller}


def _phase(pairs: list[tuple[Truth, dict[str, Any]]]) -> dict[str, Any]:
    bad = [(t, lab) for t, lab in pairs if t.label]
    safe = [lab for t, lab in pairs if not t.label]
    model = sum(1 for _, lab in pairs if lab["decided_by"] == "model")
    out: dict[str, Any] = {
        "events": len(pairs), "violations": len(bad),
        "recall_vs_model": _share(sum(1 for _, lab in bad if lab["violation"]), len(bad)),
        "model_requests_per_event": _share(model, len(pairs)),
        "decided_by_prefilter": sum(1 for _, lab in pairs if lab["decided_by"] == "prefilter"),
        "let_through": sum(1 for _, lab in bad if _let_through(lab)),
        "audited": sum(1 for _, lab in pairs if lab.get("audit")),
        "safe_pass_rate": _share(sum(1 for lab in safe if lab["decided_by"] == "model"), len(safe)),
        "safe_flagged": _share(sum(1 for lab in safe if lab.get("prefilter_flags")), len(safe)),
    }
    tricks = sorted({name for t, _ in bad for name in t.tricks})
    if tricks:
        out["let_through_by_trick"] = {
            name: {"violations": sum(1 for t, _ in bad if name in t.tricks),
                   "let_through": sum(1 for t, lab in bad if name in t.tricks and _let_through(lab))}
            for name in tricks}
    return out


def _let_through(label: dict[str, Any]) -> bool:
    return bool(label["decided_by"] == "prefilter")


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None
