"""A two-seed study on a tiny real subset: serially, and on a two-node Ray cluster started with
`ray start` while one of its workers is killed mid-run; the matrix's and sweep's points on a local
Ray instance with two workers (``--workers 2``). The numbers must be the same every way."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess  # nosec B404 - runs this interpreter, the project's script and the ray CLI
import sys
import time

import pytest
from conftest import MATRIX_RUN, ROOT, run_script

from secure_ai_mnist.cache import StageCache

pytest.importorskip("ray")
# The study tests share one worker: the killed-worker test picks a running study task by its
# process name (ray::pipeline_task), so no other Ray study may run beside it. The matrix points'
# Ray test runs other task functions on its own local instance (ray.init(address="local")), so it
# stays with the matrix run on the other group, and the two long groups run side by side.
STUDY_GROUP = pytest.mark.xdist_group("ray_study")

TINY = ("--quick", "--train-limit", "1000", "--test-limit", "200", "--epochs", "1", "--poison-count", "30",
        "--reversal-steps", "10", "--pgd-limit", "20", "--curve-limit", "10", "--autoattack-iters", "5",
        "--autoattack-targets", "1", "--square-queries", "0", "--stability-limit", "0", "--threads", "1",
        "--no-cache", "--seeds", "1,2")
VOLATILE = ("time", "cost", "utc", "path", "png", "file", "manifest", "timings", "cache", "host", "report", "output_dir",
            "bandit", "datasets", "images", "inference", "workers", "ray_address")


def stable(tree):
    """The metrics JSON without what differs between two runs of the same numbers (times, paths)."""
    if isinstance(tree, dict):
        return {k: stable(v) for k, v in tree.items() if not any(word in k for word in VOLATILE)}
    if isinstance(tree, list):
        return [stable(v) for v in tree]
    return tree


def per_seed(out):
    return {seed: stable(json.loads((out / f"seed_{seed}" / "metrics_summary_tasks5_6_7.json").read_text()))
            for seed in (1, 2)}


@pytest.fixture(scope="module")
def serial_study(tmp_path_factory, mnist_dir):
    out = tmp_path_factory.mktemp("serial")
    proc = run_script(*TINY, "--data-dir", str(mnist_dir), "--output-dir", str(out), timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@STUDY_GROUP
def test_serial_study_writes_each_seed_and_the_aggregate(serial_study):
    study = json.loads((serial_study / "study_summary.json").read_text())
    assert study["seeds"] == [1, 2] and study["executor"] == "serial"
    assert all(run["on_driver_disk"] for run in study["runs"].values())
    clean = study["metrics"]["baseline.clean_accuracy"]
    seeds = per_seed(serial_study)
    assert clean["per_seed"] == {str(s): seeds[s]["models"]["baseline"]["eval"]["clean"]["accuracy"] for s in (1, 2)}
    assert seeds[1] != seeds[2]  # two seeds, two draws
    assert (serial_study / "STUDY.md").is_file() and (serial_study / "study.html").is_file()


def test_sweep_and_matrix_points_on_two_ray_workers_give_the_serial_numbers(matrix_run, tmp_path, mnist_dir):
    # The serial run's cache without the per-point entries of two matrix points and one sweep
    # point: everything else is reused, and those points are computed again, as Ray tasks on two
    # workers (two points, so that both workers get one; all eight would only repeat this).
    stage_keys = json.loads((matrix_run / "metrics_summary_tasks5_6_7.json").read_text())["cache"]["stage_keys"]
    cache = tmp_path / "cache"
    shutil.copytree(matrix_run.parent / "cache", cache)
    recomputed = {"matrix_models": ["sig_0.5pct", "wanet_10pct"],
                  "matrix_detection": ["sig_0.5pct_detection", "wanet_10pct_detection"],
                  "matrix_removal": ["sig_0.5pct_cleaned"],  # the one point whose flags are removed
                  "sweep": ["sweep_n30_s4"], "sweep_detection": ["sweep_n30_s4_detection"]}
    for stage, labels in recomputed.items():
        for label in labels:
            entry = cache / "stages" / StageCache(None).key(label, parent=stage_keys[stage])
            assert entry.is_dir(), f"no cached {label} under {stage}"
            shutil.rmtree(entry)
    out = tmp_path / "ray_points"
    proc = run_script(*MATRIX_RUN, "--workers", "2", "--data-dir", str(mnist_dir), "--cache-dir", str(cache),
                      "--output-dir", str(out), timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Ray: 2 tasks" in proc.stderr and "Ray: 1 tasks" in proc.stderr  # the points ran as Ray tasks
    assert proc.stderr.count("Ray: connected") == 1  # five rounds of tasks, one Ray instance

    def points(run):
        backdoor = json.loads((run / "metrics_summary_tasks5_6_7.json").read_text())["backdoor"]
        return stable(backdoor["matrix"]), stable(backdoor["sweep"])

    ray_matrix, ray_sweep = points(out)
    serial_matrix, serial_sweep = points(matrix_run)
    assert len(ray_matrix["points"]) == 8 and len(ray_sweep["rows"]) == 2
    assert ray_matrix == serial_matrix and ray_sweep == serial_sweep


@STUDY_GROUP
def test_threads_flag_pins_numpy_blas_as_a_ray_worker_does():
    # A Ray worker starts with one BLAS thread; a serial run with --threads 1 must sum in the same order.
    code = ("from threadpoolctl import threadpool_info\n"
            "from secure_ai_mnist.model import configure_tensorflow\n"
            "configure_tensorflow(1)\n"
            "print(sorted({p['num_threads'] for p in threadpool_info()}))")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,  # nosec B603
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[1]"


def ray_cli(env, *args):
    ray = shutil.which("ray") or str(os.path.join(os.path.dirname(sys.executable), "ray"))
    return subprocess.run([ray, *args], env=env, capture_output=True, text=True, timeout=180, check=False)  # nosec B603


def task_pids():
    """Process ids of the Ray workers running a study task (Ray names them after the function)."""
    proc = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=True)  # nosec B603 B607
    return [int(line.split()[0]) for line in proc.stdout.splitlines() if "ray::pipeline_task" in line]


@STUDY_GROUP
def test_cluster_study_survives_a_killed_worker(serial_study, tmp_path, mnist_dir):
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}
    port = str(6300 + secrets.randbelow(500))
    head = ray_cli(env, "start", "--head", "--port", port, "--num-cpus", "1", "--include-dashboard", "false")
    try:
        assert head.returncode == 0, head.stderr[-2000:]
        node = ray_cli(env, "start", "--address", f"127.0.0.1:{port}", "--num-cpus", "1")
        assert node.returncode == 0, node.stderr[-2000:]
        out = tmp_path / "cluster"
        command = [sys.executable, "secure_ai_mnist_main.py", *TINY, "--ray-address", f"127.0.0.1:{port}",
                   "--data-dir", str(mnist_dir), "--output-dir", str(out)]
        study = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,  # nosec B603
                                 stderr=subprocess.PIPE, text=True)
        killed = None
        deadline = time.time() + 600
        while killed is None and study.poll() is None and time.time() < deadline:
            pids = task_pids()
            if pids:
                time.sleep(5)  # mid-run: the task has started its pipeline
                os.kill(pids[0], signal.SIGKILL)
                killed = pids[0]
            time.sleep(0.5)
        _, stderr = study.communicate(timeout=1500)
        assert killed is not None, "no study task was seen running"
        assert study.returncode == 0, stderr[-3000:]
        assert per_seed(out) == per_seed(serial_study)
        study = json.loads((out / "study_summary.json").read_text())
        assert study["executor"] == "ray"
        assert study["metrics"] == json.loads((serial_study / "study_summary.json").read_text())["metrics"]
        assert not list(out.rglob(".*.tmp.*")), "a half-written file was left"
    finally:
        ray_cli(env, "stop", "--force")
