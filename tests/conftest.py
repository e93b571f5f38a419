"""Shared fixtures: a runner for the entry script, tiny synthetic data, one real quick run."""

from __future__ import annotations

import hashlib
import shutil
import subprocess  # nosec B404 - tests run the project's own script and git
import sys
from pathlib import Path

import numpy as np
import pytest

from secure_ai_mnist import config, model

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "secure_ai_mnist_main.py"


def run_script(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the entry script with ``args`` in the project root; capture text output."""
    return subprocess.run(  # nosec B603 - this interpreter, our script, test-chosen arguments
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout
    )


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def tiny_model():
    """The real CNN architecture, briefly trained on separable synthetic 'digits'."""
    model.configure_tensorflow(threads=0)
    model.seed_everything(0)
    x, y = synthetic_digits(np.random.default_rng(1), 400)
    cfg = config.Config(epochs=3, batch_size=32)
    trained, _ = model.train_cnn(x, y, cfg, "tiny")
    return trained


def synthetic_digits(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 (n, 28, 28, 1) in [0, 1]: class k is a bright horizontal bar at row 2 + 2k, plus noise."""
    y = rng.integers(0, 10, size=n)
    x = rng.uniform(0.0, 0.2, size=(n, 28, 28, 1)).astype(np.float32)
    for i, label in enumerate(y):
        x[i, 2 + 2 * label : 4 + 2 * label, 4:24, 0] = 0.9
    return x, y.astype(np.int64)


@pytest.fixture(scope="session")
def mnist_dir():
    """The verified real MNIST in the user cache (downloaded once if missing)."""
    from secure_ai_mnist import data

    cfg = config.Config()
    data.load_mnist(cfg)
    return cfg.cache_dir


def tracked_file_digests() -> dict[str, str] | None:
    """SHA-256 of every file git tracks in the project (None outside a git checkout)."""
    git = shutil.which("git")
    if git is None:
        return None
    proc = subprocess.run([git, "ls-files", "-z"], cwd=ROOT, capture_output=True, check=False)  # nosec B603
    if proc.returncode != 0:
        return None
    names = [name for name in proc.stdout.decode().split("\0") if name and (ROOT / name).is_file()]
    return {name: hashlib.sha256((ROOT / name).read_bytes()).hexdigest() for name in names}


# A tiny real run with every independent-task stage (the matrix's 8 points and 2 sweep points);
# --threads 1 so that the same run on Ray workers (test_study_ray.py) must give the same numbers.
MATRIX_RUN = ("--quick", "--train-limit", "1000", "--test-limit", "200", "--epochs", "1", "--reversal-steps", "10",
              "--backdoor-matrix", "--poison-sweep", "0,30", "--sweep-trigger-sizes", "4", "--pgd-limit", "20",
              "--curve-limit", "10", "--autoattack-iters", "5", "--square-queries", "0", "--stability-limit", "0",
              "--threads", "1")


@pytest.fixture(scope="session")
def matrix_run(tmp_path_factory, mnist_dir):
    """MATRIX_RUN serially, with an empty stage cache; its output directory."""
    base = tmp_path_factory.mktemp("matrix")
    proc = run_script(*MATRIX_RUN, "--data-dir", str(mnist_dir), "--cache-dir", str(base / "cache"),
                      "--output-dir", str(base / "out"), timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return base / "out"


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory, mnist_dir):
    """One real `--quick` run of the script (real MNIST subset, empty stage cache), shared by the
    tests. It writes where a user's smoke run writes (no --output-dir), and records the tracked
    files before and after, so a test can show it left the committed run alone."""
    base = tmp_path_factory.mktemp("quick")
    # Smaller than quick mode's own subset, so the suite stays fast; the pipeline is the same.
    # The poison sweep and the matrix run in matrix_run.
    args = ("--quick", "--train-limit", "2000", "--epochs", "2", "--reversal-steps", "100",
            "--defense", "fgsm,fgsm-rs,pgd,robust",
            "--robust-epochs", "2", "--data-dir", str(mnist_dir), "--cache-dir", str(base / "cache"))
    before = tracked_file_digests()
    shutil.rmtree(ROOT / "secure_ai_outputs" / "quick", ignore_errors=True)  # no stale files from older code
    proc = run_script(*args, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = ROOT / "secure_ai_outputs" / "quick"
    return {"out": out, "json": out / "metrics_summary_tasks5_6_7.json", "stderr": proc.stderr, "args": args,
            "base": base, "tracked_before": before, "tracked_after": tracked_file_digests()}


# Under `pytest -n 2 --dist loadgroup` (the README's command) each shared end-to-end run is made
# once: the tests that use it share one worker. (test_study_ray.py puts its study tests in one
# group of their own, beside the matrix run's.)
SHARED_RUN_GROUPS = {"quick_run": "quick_run", "matrix_run": "matrix_and_ray"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the marks into the node ids
def pytest_collection_modifyitems(items):
    for item in items:
        groups = {SHARED_RUN_GROUPS[name] for name in item.fixturenames if name in SHARED_RUN_GROUPS}
        groups |= {mark.args[0] for mark in item.iter_markers("xdist_group")}
        if len(groups) > 1:
            raise pytest.UsageError(f"{item.nodeid} uses runs of two worker groups: {sorted(groups)}")
        if groups:
            item.add_marker(pytest.mark.xdist_group(groups.pop()))
