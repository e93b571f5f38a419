"""Where a run's numbers come from: library versions, the host, the git commit, Bandit's findings
and the run manifest (command, times, data and output file digests)."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess  # nosec B404 - runs git and bandit with fixed argument lists, never a shell
import sys
import time
from pathlib import Path
from typing import Any

from .common import sha256_file

def library_versions() -> dict[str, str]:
    from importlib import metadata

    names = ("tensorflow", "tensorflow-cpu", "keras", "adversarial-robustness-toolbox", "numpy",
             "scikit-learn", "matplotlib", "seaborn")
    versions = {"python": platform.python_version()}
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def host_summary() -> dict[str, Any]:
    return {"platform": platform.platform(), "machine": platform.machine(), "cpu_count": os.cpu_count()}


PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _utc(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def _run_tool(args: list[str], timeout: float) -> subprocess.CompletedProcess | None:
    """Run a fixed command in the project root; None when it cannot run at all."""
    try:
        return subprocess.run(args, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout,  # nosec B603
                              check=False)
    except (OSError, subprocess.SubprocessError):
        return None


def git_state(outputs: Path | None = None) -> dict[str, Any]:
    """The code's git commit and whether the working tree had uncommitted changes (None outside
    git). ``outputs`` (the run's output directory) is left out: the run itself rewrites it."""
    git = shutil.which("git")
    if git is None:
        return {"commit": None, "dirty": None, "note": "git not installed"}
    head = _run_tool([git, "rev-parse", "HEAD"], 10)
    if head is None or head.returncode != 0:
        return {"commit": None, "dirty": None, "note": "not a git checkout"}
    exclude = []
    if outputs is not None:
        with contextlib.suppress(ValueError):
            exclude = [f":(exclude){outputs.resolve().relative_to(PROJECT_ROOT)}"]
    status = _run_tool([git, "status", "--porcelain", "--untracked-files=no", "--", ".", *exclude], 10)
    dirty = None if status is None or status.returncode != 0 else bool(status.stdout.strip())
    return {"commit": head.stdout.strip(), "dirty": dirty}


def run_bandit() -> dict[str, Any]:
    """Bandit on this code base with the project's .bandit config: issue counts by severity,
    or available False when Bandit is not installed."""
    try:
        from importlib import metadata

        version = metadata.version("bandit")
    except metadata.PackageNotFoundError:
        return {"available": False, "note": "bandit is not installed; run `pip install bandit` to include it"}
    start = time.perf_counter()
    result = _run_tool([sys.executable, "-m", "bandit", "-q", "-r", ".", "-c", ".bandit", "-f", "json"], 300)
    elapsed = round(time.perf_counter() - start, 3)
    if result is None or not result.stdout.strip():
        return {"available": True, "version": version, "ran": False, "note": "bandit did not produce a report"}
    try:
        findings = json.loads(result.stdout)
    except ValueError:
        return {"available": True, "version": version, "ran": False, "note": "bandit output was not JSON"}
    issues = findings.get("results", [])
    severity = {level: sum(1 for i in issues if i.get("issue_severity") == level) for level in ("HIGH", "MEDIUM", "LOW")}
    totals = findings.get("metrics", {}).get("_totals", {})
    return {"available": True, "version": version, "ran": True, "command": "bandit -q -r . -c .bandit",
            "issues": len(issues), "by_severity": severity, "lines_of_code": totals.get("loc"),
            "time_s": elapsed,
            "findings": [f"{i.get('filename')}:{i.get('line_number')} {i.get('test_id')} {i.get('issue_text')}"
                         for i in issues[:20]]}


def run_manifest(started: float, command_line: list[str], data_sha256: dict[str, str], root: Path,
                 files: list[str], code: dict[str, Any]) -> dict[str, Any]:
    """Who ran what, when, on which code (``git_state`` read when the run started: a commit made
    during a long run is not the code that ran) and data, and the SHA-256 of every file written."""
    written = {}
    for name in sorted(set(files)):
        path = Path(name)
        if path.is_file():
            with contextlib.suppress(ValueError):
                name = str(path.relative_to(root))
            written[name] = sha256_file(path)
    return {"started_utc": _utc(started), "finished_utc": _utc(time.time()), "command_line": command_line,
            "working_directory": str(Path.cwd()), "code": code, "data_sha256": data_sha256,
            "files_sha256": written, "log_file": "run.log (run_failed.log when the run fails)"}
