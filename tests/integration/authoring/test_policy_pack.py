"""``safeguard policies import`` on a pack in ROOST's published layout, then ``lint`` and ``eval`` on
what it wrote (the fixture pack: tests/fixtures/roost-pack, written by us in that layout)."""

from __future__ import annotations

import json

import orjson

from tests.integration.helpers import ROOT, safeguard

PACK = ROOT / "tests/fixtures/roost-pack"


def test_an_imported_pack_lints_and_evaluates(sims, tmp_path) -> None:
    out = tmp_path / "imported"
    proc = safeguard("policies", "import", str(PACK), "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    by_id = {p["id"]: p for p in doc["policies"]}
    assert set(by_id) == {"risky-stunts", "gory-descriptions", "tvec-policy"}
    # 7 rows x (prompt, response) in the LF file, one response without a code; 4 rows in the CRLF one, one
    # prompt without a code.
    assert (by_id["risky-stunts"]["items"], by_id["risky-stunts"]["labelled"]) == (14, 13)
    assert (by_id["gory-descriptions"]["items"], by_id["gory-descriptions"]["labelled"]) == (8, 7)
    assert by_id["tvec-policy"]["dataset"] is None and by_id["tvec-policy"]["items"] == 0

    lint = safeguard("policies", "lint", str(out))
    assert lint.returncode == 0, lint.stdout[-3000:]
    assert "assumed on import" in lint.stdout  # lint says what the import had to assume

    for policy_id in ("risky-stunts", "gory-descriptions"):
        golden = out / f"{policy_id}.golden.jsonl"
        rows = [orjson.loads(line) for line in golden.read_text().splitlines()]
        assert {r["source"] for r in rows} == {"prompt", "response"}
        url = sims(1, answer_key=golden).urls[0]
        proc = safeguard("eval", "--policy", str(out / f"{policy_id}.md"), "--dataset", str(golden), "--replica",
                         url, "--json")
        assert proc.returncode == 0, proc.stderr[-2000:]
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        labelled = [r for r in rows if r["label"] is not None]
        assert result["n"] == len(labelled) and result["errors"] == 0
        assert result["tp"] == sum(r["label"] for r in labelled)


def test_import_refuses_to_overwrite_without_force(tmp_path) -> None:
    out = tmp_path / "imported"
    assert safeguard("policies", "import", str(PACK), "--out", str(out)).returncode == 0
    again = safeguard("policies", "import", str(PACK), "--out", str(out))
    assert again.returncode != 0 and "--force" in again.stderr
    assert safeguard("policies", "import", str(PACK), "--out", str(out), "--force").returncode == 0
