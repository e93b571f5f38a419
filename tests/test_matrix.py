"""The backdoor matrix: its points are drawn from the seed and vary target and place; end to end
on a small real subset, every detector is scored blind at every point and removal follows the
configured defense."""

from __future__ import annotations

import json

import numpy as np

import secure_ai_mnist_main as main
from secure_ai_mnist import config, matrix, stages
from secure_ai_mnist.detection import DETECTORS
from secure_ai_mnist.triggers import FAMILIES


def test_points_cover_every_family_twice_and_vary_target_and_place():
    points = matrix.matrix_points(60000, 42)
    assert [p.family for p in points] == [f for f in FAMILIES for _ in range(2)]
    assert points == matrix.matrix_points(60000, 42) and points != matrix.matrix_points(60000, 43)
    assert len({p.target_class for p in points}) >= 4, "the target class must not be fixed"
    badnets = [p.spec for p in points if p.family == "badnets"]
    assert all(p.poison_count == round(rate * 60000) for p, rate in
               zip(points, [r for f in FAMILIES for r in matrix.MATRIX_RATES[f]]))
    seen = {(s.corner, s.margin, s.size, s.pattern) for seed in range(40, 46)
            for s in (p.spec for p in matrix.matrix_points(60000, seed) if p.family == "badnets")}
    assert len(seen) >= 6 and badnets, "the badnets patch must move across seeds"


def test_poisoned_set_is_deterministic_and_labels_only_the_poisons(rng):
    y = rng.integers(0, 10, size=3000)
    x = rng.uniform(0, 0.5, size=(3000, 28, 28, 1)).astype(np.float32)
    point = matrix.matrix_points(3000, 1)[2]  # blended
    idx, x_p, y_p = matrix.poisoned_set(x, y, point, 1)
    again = matrix.poisoned_set(x, y, point, 1)
    np.testing.assert_array_equal(idx, again[0])
    np.testing.assert_array_equal(x_p, again[1])
    assert np.all(y_p[idx] == point.target_class) and np.all(y[idx] != point.target_class)
    untouched = np.setdiff1d(np.arange(3000), idx)
    np.testing.assert_array_equal(x_p[untouched], x[untouched])


def test_matrix_stages_keep_models_when_a_detector_changes():
    by_name = {s.name: s for s in main.pipeline(config.Config(backdoor_matrix=True))}
    assert not {"detect_reversal", "detect_activations", "detect_knn", "detection"} & set(by_name["matrix_models"].modules)
    assert "matrix_models" in by_name["matrix_detection"].reads and by_name["matrix_detection"].config == stages.DETECT
    assert not [s.name for s in main.pipeline(config.Config()) if s.name.startswith("matrix")]


def test_matrix_end_to_end_on_a_small_real_subset(matrix_run):
    out = matrix_run
    summary = json.loads((out / "metrics_summary_tasks5_6_7.json").read_text())
    result = summary["backdoor"]["matrix"]
    assert [p["family"] for p in result["points"]] == [f for f in FAMILIES for _ in range(2)]
    assert result["selected"] == "combined" and result["detectors"] == list(DETECTORS)
    for point in result["points"]:
        assert set(point["detection"]) == set(DETECTORS)
        assert all(d["uses_ground_truth"] is False for d in point["detection"].values())
        combined = point["detection"]["combined"]
        assert point["removal"]["removed"] == combined["flagged"]
        assert point["removal"]["retrained"] == (combined["flagged"] > 0)
        assert 0 <= point["attack_success_rate"] <= 1 and 0 <= point["removal"]["clean_accuracy"] <= 1
        runtime = point["runtime_check"]
        rates = (runtime["flag_rate_triggered"], runtime["flag_rate_clean"])
        assert all(0 <= r <= 1 for r in rates) if runtime["trigger_recovered"] else rates == (None, None)
    rows = summary["backdoor"]["sweep"]["rows"]
    assert sorted(row["poison_count"] for row in rows) == [0, 30]
    for row in rows:
        if row["poison_count"] == 0:  # nothing planted: a detector that finds something is no detector
            assert row["detection"]["flagged"] <= 10, row
    assert (out / "images" / "backdoor_matrix_f1.png").read_bytes().startswith(b"\x89PNG")
    assert "### Backdoor matrix" in (out / "REPORT.md").read_text()


def test_runtime_record_measures_the_check_or_says_there_is_none():
    import numpy as np

    from secure_ai_mnist import matrix
    from secure_ai_mnist.detector_api import TriggerCheck
    from secure_ai_mnist.triggers import TriggerSpec

    point = matrix.MatrixPoint("p", "badnets", 10, 3, TriggerSpec(size=3, margin=1, corner="bottom-right"))
    x = np.zeros((20, 28, 28, 1), np.float32)
    y = np.arange(20) % 10
    mask = np.zeros((1, 28, 28, 1), np.float32)
    mask[0, 24:27, 24:27] = 1
    check = TriggerCheck(np.array([3]), mask, np.ones_like(mask), np.array([0.9]))
    record = matrix.runtime_record(check, x, y, point)
    assert record == {"trigger_recovered": True, "flag_rate_triggered": 1.0, "flag_rate_clean": 0.0}
    empty = TriggerCheck(np.zeros(0, np.int64), mask[:0], mask[:0], np.zeros(0))
    for none in (None, empty):
        assert matrix.runtime_record(none, x, y, point) == {"trigger_recovered": False, "flag_rate_triggered": None,
                                                             "flag_rate_clean": None}
