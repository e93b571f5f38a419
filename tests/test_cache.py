from __future__ import annotations

import json

import numpy as np
from conftest import run_script

from secure_ai_mnist import cache
from secure_ai_mnist.detection import DETECTORS


def test_arrays_roundtrip_and_tamper_detection(tmp_path, rng):
    store = cache.StageCache(tmp_path)
    key = store.key("fgsm_train", eps=0.3)
    array = rng.uniform(size=(4, 28, 28, 1)).astype(np.float32)
    value, info = cache.cached_arrays(store, key, "set", lambda: (array, {"n": 4}))
    assert info == {"n": 4} and store.hits == []
    again, info2 = cache.cached_arrays(store, key, "set", lambda: (np.zeros(1), {"n": 0}))
    np.testing.assert_array_equal(again, array)
    assert info2 == {"n": 4} and store.hits == ["set"]
    # A flipped byte fails the SHA-256 check: the entry is dropped and recomputed.
    npz = tmp_path / key / "arrays.npz"
    raw = bytearray(npz.read_bytes())
    raw[-20] ^= 0xFF
    npz.write_bytes(bytes(raw))
    fresh, info3 = cache.cached_arrays(store, key, "set", lambda: (np.ones(2), {"n": 2}))
    np.testing.assert_array_equal(fresh, np.ones(2))
    assert info3 == {"n": 2}


def test_keys_depend_on_stage_name_and_inputs():
    store = cache.StageCache(None)
    assert store.key("baseline", epochs=3) == store.key("baseline", epochs=3)
    assert store.key("baseline", epochs=3) != store.key("baseline", epochs=4)
    assert store.key("baseline", epochs=3) != store.key("poisoned", epochs=3)


def test_disabled_cache_never_hits(rng):
    store = cache.StageCache(None)
    calls = []
    for _ in range(2):
        cache.cached_arrays(store, "k", "set", lambda: (calls.append(1) or np.zeros(1), {}))
    assert len(calls) == 2


def test_second_run_reuses_and_flag_change_invalidates_only_dependents(quick_run):
    first = json.loads(quick_run["json"].read_text())
    assert first["cache"]["reused"] == []
    out = quick_run["base"] / "rerun"
    proc = run_script(*quick_run["args"], "--output-dir", str(out), timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    second = json.loads((out / "metrics_summary_tasks5_6_7.json").read_text())
    names = ["baseline", "poisoned", "defense_fgsm", "defense_fgsm_rs", "defense_pgd", "defense_robust"]
    backdoor_stages = {"poison detection flags", "unpoisoned control flags", "model retrained without flagged samples"}
    assert set(second["cache"]["reused"]) == (
        {"baseline model", "poisoned model", "FGSM train set", "FGSM test set", "FGSM-trained defense",
         "FGSM test set vs defense", "fgsm-rs defense", "pgd defense", "robust defense"} | backdoor_stages
        | {f"PGD set vs {n}" for n in names} | {f"AutoAttack vs {n}" for n in names}
        | {f"eps curve of {n}" for n in names if n != "poisoned"})
    for detector in DETECTORS:  # seeded: same flags
        for key in ("flagged", "true_positives", "false_positives", "f1"):
            assert second["backdoor"]["detection"][detector][key] == first["backdoor"]["detection"][detector][key]
    assert second["accuracy_vs_eps"]["pgd"] == first["accuracy_vs_eps"]["pgd"]
    assert second["transfer"] == first["transfer"]
    for model in ("baseline", "poisoned", "defense_fgsm"):
        assert second["models"][model]["eval"]["clean"]["accuracy"] == first["models"][model]["eval"]["clean"]["accuracy"]
    # A new FGSM eps invalidates the FGSM training set and its defense, not the other models
    # (the per-batch defenses use --pgd-eps).
    out3 = quick_run["base"] / "eps"
    proc = run_script(*quick_run["args"], "--fgsm-eps", "0.2", "--output-dir", str(out3), timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    third = json.loads((out3 / "metrics_summary_tasks5_6_7.json").read_text())
    reused = set(third["cache"]["reused"])
    assert {h for h in reused if not h.startswith(("PGD set", "eps curve", "AutoAttack"))} == {
        "baseline model", "poisoned model", "fgsm-rs defense", "pgd defense", "robust defense"} | backdoor_stages
    assert "PGD set vs baseline" in reused and "PGD set vs defense_fgsm" not in reused
    assert "eps curve of defense_fgsm" not in reused
    assert "AutoAttack vs baseline" in reused and "AutoAttack vs defense_fgsm" not in reused
