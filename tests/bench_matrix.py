#!/usr/bin/env python3
"""Backdoor-matrix benchmark (run by hand, never collected by pytest).

    python tests/bench_matrix.py                      # 10,000 training images, about 45 min on 2 cores
    python tests/bench_matrix.py --train-limit 60000  # the full training set (several hours on 2 cores)

Runs the pipeline once with --backdoor-matrix (the evasion sections cut to small subsets, which
the matrix does not read), then writes its matrix section, the unpoisoned control, the default
attack's detection rows, the stage times, the host and the commit to
secure_ai_outputs/bench_backdoor_matrix.json, and copies the heatmap and the trigger-family figure
to secure_ai_outputs/images/. Every number in that file is the run's own.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess  # nosec B404 - runs the project's own script
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from secure_ai_mnist.provenance import git_state  # noqa: E402

OUTPUTS = ROOT / "secure_ai_outputs"
SMALL_EVASION = ("--pgd-limit", "200", "--curve-limit", "100", "--square-limit", "100", "--stability-limit", "100")
DETECTION_KEYS = ("flagged", "time_s", "true_positives", "false_positives", "precision", "recall", "f1")


def cpu_flags_note() -> str:
    flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("flags")), []) if Path("/proc/cpuinfo").is_file() else []
    vector = "AVX-512" if any(f.startswith("avx512") for f in flags) else "AVX2, no AVX-512" if "avx2" in flags else "no AVX2"
    return f"{os.cpu_count()}-core {platform.processor() or platform.machine()} with {vector} (/proc/cpuinfo), no GPU used"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-limit", type=int, default=10000, help="training images of every matrix model")
    parser.add_argument("--out", type=Path, default=OUTPUTS / "bench_backdoor_matrix.json", help="the JSON written")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_matrix_") as tmp:
        command = [sys.executable, "secure_ai_mnist_main.py", "--backdoor-matrix", "--train-limit",
                   str(args.train_limit), *SMALL_EVASION, "--output-dir", f"{tmp}/out"]
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        subprocess.run(command, cwd=ROOT, check=True)  # nosec B603 - our own script, fixed arguments
        summary = json.loads((Path(tmp) / "out" / "metrics_summary_tasks5_6_7.json").read_text())
        detection = summary["backdoor"]["detection"]
        record = {
            "note": "The --backdoor-matrix section of one pipeline run, written by tests/bench_matrix.py (its full "
                    "summary stayed outside the repository); every number below was written by that run.",
            "command": ["secure_ai_mnist_main.py", *command[2:-2]],
            "started_utc": started, "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "code": git_state(),
            "host": summary["host"], "cpu_flags_note": cpu_flags_note(),
            "config": summary["config"], "data": summary["data"], "timings_s": summary["timings_s"],
            "default_attack_detection": {name: {k: v for k, v in detection[name].items() if k in DETECTION_KEYS}
                                         for name in detection if isinstance(detection[name], dict)
                                         and "f1" in detection[name]},
            "unpoisoned_control": detection["unpoisoned_control"],
            "matrix": summary["backdoor"]["matrix"],
        }
        record["figures_copied_to"] = []
        for png in ("backdoor_matrix_f1.png", "trigger_families.png"):  # the run's paths above were temporary
            shutil.copyfile(Path(tmp) / "out" / "images" / png, OUTPUTS / "images" / png)
            record["figures_copied_to"].append(f"secure_ai_outputs/images/{png}")
    partial = args.out.with_suffix(".json.tmp")
    partial.write_text(json.dumps(record, indent=2) + "\n")
    partial.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
