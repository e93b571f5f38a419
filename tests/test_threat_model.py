"""THREAT_MODEL.md must point at code that exists: every `path::name` it cites is checked."""

from __future__ import annotations

import re

from conftest import ROOT


def test_every_cited_mitigation_exists():
    text = (ROOT / "THREAT_MODEL.md").read_text()
    cited = re.findall(r"`([\w./]+\.py)::(\w+)`", text)
    assert len(cited) >= 15, "the threat model should map its threats to code"
    for path, name in cited:
        source = (ROOT / path).read_text()
        assert re.search(rf"^\s*(def|class) {name}\b", source, re.MULTILINE), f"{path}::{name} not found"


def test_every_stride_category_is_covered():
    rows = [line for line in (ROOT / "THREAT_MODEL.md").read_text().splitlines() if line.startswith("| ")]
    categories = {row.split("|")[1].strip() for row in rows[1:]}
    assert {"Spoofing", "Tampering", "Repudiation", "Information disclosure", "Denial of service",
            "Elevation of privilege"} <= categories
