"""The run times the README states come from the committed benchmarks. Each stated time carries
an invisible marker naming its source, ``<!-- bench FILE KEY.PATH -->`` right after it, and must
lie within 25% of that value; the README's headline times must carry one."""

from __future__ import annotations

import json
import re

import pytest
from conftest import ROOT

README = ROOT / "README.md"
OUTPUTS = ROOT / "secure_ai_outputs"
TOLERANCE = 0.25
MARKED = re.compile(r"(\d[\d,]*(?:\.\d+)?) ?(s|min) ?<!-- bench (\S+) (\S+) -->")


def lookup(tree, path: str):
    for key in path.split("."):
        tree = tree[key]
    return float(tree)


def marked_times(text: str) -> list[tuple[float, str, str]]:
    """(seconds stated, benchmark file, key path) for every marked time in ``text``."""
    return [(float(value.replace(",", "")) * (60 if unit == "min" else 1), file, path)
            for value, unit, file, path in MARKED.findall(text)]


def test_marker_parser_reads_minutes_seconds_and_thousands():
    text = "about 9.5 min<!-- bench a.json runs.x --> and 1,207 s <!-- bench b.json y.z --> (3 min) and 4 s<!-- bench c d -->"
    assert marked_times(text) == [(570.0, "a.json", "runs.x"), (1207.0, "b.json", "y.z"), (4.0, "c", "d")]


def test_readme_headline_times_are_marked():
    stated = {path for _, _, path in marked_times(README.read_text())}
    assert {"runs.full_cold.wall_s", "runs.quick.wall_s"} <= stated


@pytest.mark.parametrize("stated,file,path", marked_times(README.read_text()))
def test_readme_time_matches_its_benchmark(stated, file, path):
    measured = lookup(json.loads((OUTPUTS / file).read_text()), path)
    assert abs(stated - measured) <= TOLERANCE * measured, f"README says {stated:.0f} s, {file} {path} = {measured:.0f} s"
