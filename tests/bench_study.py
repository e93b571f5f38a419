#!/usr/bin/env python3
"""The study executor's cost and its parallel speed-up (run by hand, never collected by pytest).

    python tests/bench_study.py    # a 4-seed quick study three ways, about 25 min on 2 cores

The same 4-seed study (``--quick --seeds 1,2,3,4 --threads 1 --no-cache``, real MNIST) is timed
  - serially in one process (the default executor),
  - on a local Ray instance with one worker (``--workers 1``): the executor's overhead,
  - on a local Ray instance with two workers (``--workers 2``): the speed-up of a second core.
``--threads 1`` keeps each task's TensorFlow to one thread, so each worker holds one core.
Every variant must give the same per-seed metrics JSONs (times and paths aside), and so must a
single run of seed 1 with the same flags (``--quick --threads 1 --no-cache --seed 1``). The thread
count is part of the flags: TensorFlow and BLAS sum in an order that depends on it, so a run with
the default threads is a different (equally valid) draw, compared only for the record.
Writes secure_ai_outputs/bench_study.json with the wall times, the two ratios and the host.
"""

from __future__ import annotations

import argparse
import json
import subprocess  # nosec B404 - runs this interpreter on the project's script
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from test_study_ray import stable  # noqa: E402

from secure_ai_mnist.common import atomic_write_bytes  # noqa: E402
from secure_ai_mnist.provenance import git_state, host_summary  # noqa: E402
from secure_ai_mnist.summary_schema import SUMMARY_FILENAME  # noqa: E402

OVERHEAD_GOAL = 0.05
SPEEDUP_GOAL = 0.60


def timed_run(args: list[str], log: Path) -> float:
    """Wall seconds of one run of the entry script (a fresh interpreter); raises if it fails."""
    start = time.perf_counter()
    with log.open("w") as sink:
        proc = subprocess.run([sys.executable, str(ROOT / "secure_ai_mnist_main.py"), *args], cwd=ROOT,  # nosec B603
                              stdout=sink, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"run failed ({proc.returncode}); see {log}")
    return seconds


def per_seed(out: Path, seeds: list[int]) -> dict[int, dict]:
    return {s: stable(json.loads((out / f"seed_{s}" / SUMMARY_FILENAME).read_text())) for s in seeds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="1,2,3,4")
    parser.add_argument("--out", type=Path, default=ROOT / "secure_ai_outputs" / "bench_study.json")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    common = ["--quick", "--threads", "1", "--no-cache", "--seeds", args.seeds]
    work = Path(tempfile.mkdtemp(prefix="bench_study_"))
    started, wall, outs = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), {}, {}
    for name, extra in (("serial", []), ("ray_1_worker", ["--workers", "1"]), ("ray_2_workers", ["--workers", "2"])):
        outs[name] = work / name
        wall[name] = round(timed_run([*common, *extra, "--output-dir", str(outs[name])], work / f"{name}.log"), 1)
        print(f"{name}: {wall[name]} s", flush=True)
    singles = {"single_seed_run": ["--threads", "1"], "single_seed_default_threads": []}
    for name, extra in singles.items():
        outs[name] = work / name
        wall[name] = round(timed_run(["--quick", "--no-cache", *extra, "--seed", str(seeds[0]),
                                      "--output-dir", str(outs[name])], work / f"{name}.log"), 1)
    reference = per_seed(outs["serial"], seeds)
    same = {name: per_seed(outs[name], seeds) == reference for name in ("serial", "ray_1_worker", "ray_2_workers")}
    for name in singles:
        same[name] = stable(json.loads((outs[name] / SUMMARY_FILENAME).read_text())) == reference[seeds[0]]
    overhead = wall["ray_1_worker"] / wall["serial"] - 1
    speedup = wall["ray_2_workers"] / wall["ray_1_worker"]
    code = git_state()
    result = {
        "command": " ".join(["python tests/bench_study.py", *sys.argv[1:]]),
        "study_flags": " ".join(common), "started_utc": started, "commit": code["commit"],
        "tree_clean": code["dirty"] is False, "host": host_summary(), "wall_s": wall,
        "executor_overhead": {"value": round(overhead, 4), "goal_at_most": OVERHEAD_GOAL, "met": overhead <= OVERHEAD_GOAL,
                              "definition": "ray_1_worker / serial - 1"},
        "two_workers_share": {"value": round(speedup, 4), "goal_at_most": SPEEDUP_GOAL, "met": speedup <= SPEEDUP_GOAL,
                              "definition": "ray_2_workers / ray_1_worker"},
        "per_seed_json_equal_to_serial": same,
        "note": "single_seed_default_threads is for the record: another thread count sums in another order",
    }
    atomic_write_bytes(args.out, (json.dumps(result, indent=2) + "\n").encode())
    print(json.dumps(result, indent=2))
    return 0 if all(v for k, v in same.items() if k != "single_seed_default_threads") else 1


if __name__ == "__main__":
    raise SystemExit(main())
