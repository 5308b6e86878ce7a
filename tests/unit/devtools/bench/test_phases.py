from __future__ import annotations

from typing import Any

from streams.devtools.bench.phases import figures, headline
from streams.devtools.bench.workload import Truth


def label(decided_by: str, violation: bool = False, **extra: Any) -> dict[str, Any]:
    return {"decided_by": decided_by, "violation": violation, "audit": False, **extra}


def test_per_phase_figures_from_labels() -> None:
    truth = {"st-0": Truth("steady", 1), "st-1": Truth("steady", 0), "st-2": Truth("steady", 0),
             "st-3": Truth("steady", 1),
             "ad-0": Truth("adversarial", 1, ("homoglyphs",)),
             "ad-1": Truth("adversarial", 1, ("homoglyphs", "spaced")),
             "ad-2": Truth("adversarial", 0)}
    labels = {"st-0": label("model", True), "st-1": label("prefilter"), "st-2": label("model", audit=True),
              "st-3": label("prefilter"),  # a violation the prefilter let through
              "ad-0": label("model", True, prefilter_flags=["mixed_script"]), "ad-1": label("prefilter"),
              "ad-2": label("model", prefilter_flags=["spaced_letters"])}
    out = figures(labels, truth)
    assert set(out) == {"steady", "adversarial"}
    st = out["steady"]
    assert (st["events"], st["violations"], st["recall_vs_model"]) == (4, 2, 0.5)
    assert (st["model_requests_per_event"], st["decided_by_prefilter"]) == (0.5, 2)
    assert (st["let_through"], st["audited"]) == (1, 1)
    assert (st["safe_pass_rate"], st["safe_flagged"]) == (0.5, 0.0)
    ad = out["adversarial"]
    assert (ad["violations"], ad["let_through"], ad["safe_pass_rate"], ad["safe_flagged"]) == (2, 1, 1.0, 1.0)
    assert ad["let_through_by_trick"] == {"homoglyphs": {"violations": 2, "let_through": 1},
                                          "spaced": {"violations": 1, "let_through": 1}}


def test_headline_names_the_design_fields() -> None:
    truth = {f"{p}-{k}": Truth(phase, int(k == 0)) for phase, p in (("steady", "st"), ("shifted", "sh"),
                                                                   ("adversarial", "ad")) for k in range(4)}
    on = {e: label("model", t.label == 1) for e, t in truth.items()}
    off = {e: label("prefilter") for e in truth}
    h = headline({"controller_on": figures(on, truth), "controller_off": figures(off, truth)})
    assert (h["events"], h["violation_share"]) == (4, 0.25)
    assert (h["recall_vs_model"], h["model_requests_per_event"]) == (1.0, 1.0)
    assert h["shifted"]["controller"] == "on" and h["shifted"]["recall_vs_model"] == 1.0
    assert h["shifted_controller_off"] == {**h["shifted_controller_off"], "controller": "off", "recall_vs_model": 0.0,
                                           "model_requests_per_event": 0.0}
    assert (h["adversarial"]["violations"], h["adversarial"]["let_through"]) == (1, 0)
    assert h["adversarial"]["controller_off"]["let_through"] == 1
