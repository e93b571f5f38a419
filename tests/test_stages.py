"""The stage runner: what a stage's cache key covers, what a stage may read, and (on a tiny
real run of a copy of the project) that editing a presentation module keeps every trained
model and adversarial set while editing model.py recomputes them."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess  # nosec B404 - tests run a copy of the project's own script
import sys

import numpy as np
import pytest
from conftest import ROOT

from secure_ai_mnist import stages
from secure_ai_mnist.cache import StageCache
from secure_ai_mnist.config import Config


def make(cfg: Config, cache_root=None) -> stages.Runner:
    return stages.Runner(cfg, StageCache(cache_root), {"images": ROOT, "models": ROOT, "root": ROOT})


def source(cfg: Config, inputs: stages.StageInputs) -> np.ndarray:
    return np.arange(cfg.seed)


def double(cfg: Config, inputs: stages.StageInputs) -> tuple[np.ndarray, dict]:
    return 2 * inputs["source"], {"epochs": cfg.epochs}


def sneaky(cfg: Config, inputs: stages.StageInputs) -> int:
    return len(inputs["source"])  # not declared in reads


def toy_pipeline(modules=("model",)) -> list[stages.Stage]:
    return [stages.Stage("source", source, config=("seed",)),
            stages.Stage("double", double, reads=("source",), config=("epochs",), modules=modules, cache="arrays")]


def test_key_covers_declared_config_reads_and_code_only():
    base = make(Config(seed=5, epochs=2))
    base.run(toy_pipeline())
    np.testing.assert_array_equal(base.results["double"][0], 2 * np.arange(5))
    same = make(Config(seed=5, epochs=2, fgsm_eps=0.1))  # an undeclared field
    same.run(toy_pipeline())
    assert same.keys == base.keys
    other_epochs = make(Config(seed=5, epochs=3))
    other_epochs.run(toy_pipeline())
    assert other_epochs.keys["source"] == base.keys["source"] and other_epochs.keys["double"] != base.keys["double"]
    other_seed = make(Config(seed=6, epochs=2))  # a read stage's key changes, so the reader's does
    other_seed.run(toy_pipeline())
    assert other_seed.keys["double"] != base.keys["double"]
    other_code = make(Config(seed=5, epochs=2))
    other_code.run(toy_pipeline(modules=("attacks",)))
    assert other_code.keys["double"] != base.keys["double"]


def test_cached_stage_is_reused_and_reported(tmp_path):
    first = make(Config(seed=4), tmp_path)
    first.run(toy_pipeline())
    again = make(Config(seed=4), tmp_path)
    again.run(toy_pipeline())
    assert first.cache.hits == [] and again.cache.hits == ["double"]
    np.testing.assert_array_equal(again.results["double"][0], first.results["double"][0])


def test_undeclared_reads_and_bad_declarations_are_refused():
    with pytest.raises(KeyError, match="not declared"):
        make(Config(seed=3)).run([stages.Stage("source", source), stages.Stage("sneaky", sneaky)])
    with pytest.raises(ValueError, match="no earlier stage"):
        make(Config(seed=3)).run([stages.Stage("double", double, reads=("source",))])
    with pytest.raises(ValueError, match="may not depend"):
        stages.Stage("x", double, modules=("plots",), cache="arrays")
    with pytest.raises(ValueError, match="no module"):
        stages.Stage("x", double, modules=("nonexistent",))


def swallows_interrupt(cfg: Config, inputs: stages.StageInputs) -> int:
    import os
    import signal

    try:
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C arrives while library code runs...
    except BaseException:  # ...and that code swallows it (as TensorFlow's tracing can)
        pass
    return 1


def test_swallowed_interrupt_still_stops_before_the_next_stage():
    import signal

    before = signal.getsignal(signal.SIGINT)
    runner = make(Config(seed=3))
    with pytest.raises(KeyboardInterrupt):
        runner.run([stages.Stage("source", source), stages.Stage("swallow", swallows_interrupt),
                    stages.Stage("later", source)])
    assert runner.interrupted and "swallow" in runner.results and "later" not in runner.results
    assert signal.getsignal(signal.SIGINT) is before, "the run's handler is removed afterwards"


def test_entry_pipeline_declares_consistent_stages():
    import secure_ai_mnist_main as entry

    cfg = Config(defense="fgsm,fgsm-rs,pgd,robust", poison_sweep="0,10")
    declared = entry.pipeline(cfg)
    names = [s.name for s in declared]
    for position, stage in enumerate(declared):
        assert set(stage.reads) <= set(names[:position]), stage.name
        assert set(stage.config) <= {f.name for f in dataclasses.fields(Config)}, stage.name
        if stage.cache:
            assert not stages.PRESENTATION_MODULES & set(stage.modules)
    trained = {"baseline", "poisoned", "poison_cleaned", "defense_fgsm", "defense_fgsm_rs", "defense_pgd",
               "defense_robust"}
    assert {s.name for s in declared if s.cache == "model"} == trained


def run_copy(project, *args: str) -> dict:
    proc = subprocess.run(  # nosec B603 - this interpreter, the copied script, test-chosen arguments
        [sys.executable, str(project / "secure_ai_mnist_main.py"), *args], capture_output=True, text=True,
        cwd=project, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = args[args.index("--output-dir") + 1]
    return json.loads((project / out / "metrics_summary_tasks5_6_7.json").read_text())


def append_comment(path) -> None:
    path.write_text(path.read_text() + "\n# an edit for the cache test\n")


# The smallest real run with every default stage: cheap enough to run three times.
TINY_RUN = ("--quick", "--train-limit", "500", "--test-limit", "100", "--epochs", "1", "--reversal-steps", "10",
            "--pgd-limit", "20", "--curve-limit", "10", "--autoattack-iters", "5", "--square-queries", "0",
            "--stability-limit", "0")


def test_editing_presentation_keeps_models_and_editing_model_py_recomputes(mnist_dir, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(ROOT / "secure_ai_mnist", project / "secure_ai_mnist",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "secure_ai_mnist_main.py", project)
    args = (*TINY_RUN, "--data-dir", str(mnist_dir), "--cache-dir", str(tmp_path / "cache"))
    first = run_copy(project, *args, "--output-dir", "out_first")
    assert first["cache"]["reused"] == []
    for module in ("report.py", "plots.py", "inference.py"):
        append_comment(project / "secure_ai_mnist" / module)
    edited = run_copy(project, *args, "--output-dir", "out_presentation")
    reused = set(edited["cache"]["reused"])
    models = {"baseline model", "poisoned model", "model retrained without flagged samples", "FGSM-trained defense"}
    adversarial = {"FGSM train set", "FGSM test set", "FGSM test set vs defense"} | {
        f"{attack} vs {n}" for n in first["pgd"]["per_model"] for attack in ("PGD set", "AutoAttack")}
    assert models | adversarial | {"poison detection flags"} <= reused
    assert edited["results_table"] == first["results_table"]

    append_comment(project / "secure_ai_mnist" / "model.py")
    recomputed = run_copy(project, *args, "--output-dir", "out_model")
    assert not (models | adversarial) & set(recomputed["cache"]["reused"])
    assert recomputed["results_table"] == first["results_table"]  # a comment changes no number


def square_task(job: int, shared: np.ndarray) -> tuple[np.ndarray, dict]:
    return shared * job, {"job": job}


def test_cached_tasks_compute_only_what_is_missing_and_keep_labels(tmp_path):
    cfg = Config()  # workers 0: the tasks run here, one after another
    calls: list[int] = []

    def counted(job: int, shared: np.ndarray) -> tuple[np.ndarray, dict]:
        calls.append(job)
        return square_task(job, shared)

    inputs = stages.StageInputs({}, "parent-key", StageCache(tmp_path), {})
    shared = np.arange(3.0)
    first = inputs.cached_tasks({"a": 2, "b": 3}, counted, shared, cfg)
    assert calls == [2, 3] and np.array_equal(first["b"][0], shared * 3) and first["a"][1] == {"job": 2}
    again = inputs.cached_tasks({"a": 2, "b": 3, "c": 4}, counted, shared, cfg)
    assert calls == [2, 3, 4]  # a and b came from the cache; only c ran
    assert list(again) == ["a", "b", "c"] and np.array_equal(again["a"][0], first["a"][0])
    other_parent = stages.StageInputs({}, "another-key", StageCache(tmp_path), {})
    other_parent.cached_tasks({"a": 2}, counted, shared, cfg)
    assert calls == [2, 3, 4, 2]  # a sub-result is keyed by its stage's key too
