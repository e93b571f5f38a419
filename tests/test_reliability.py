"""Fault injection: a full disk and an interrupted run leave the previous outputs intact and
end with one error line and a non-zero exit code, never a traceback."""

from __future__ import annotations

import errno
import logging
import pathlib
import shutil
import signal
import subprocess  # nosec B404 - tests run the project's own script
import sys

import secure_ai_mnist_main as entry
from conftest import ROOT, SCRIPT

from secure_ai_mnist import common


def test_full_disk_keeps_the_old_file_and_reports_one_line(tmp_path, monkeypatch, caplog):
    target = tmp_path / "metrics.json"
    target.write_bytes(b"old")

    def disk_full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_bytes", disk_full)
    with caplog.at_level(logging.ERROR):
        code = entry.guarded(lambda: common.atomic_write_bytes(target, b"new"))
    assert code == 1
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"], "no temporary file may be left behind"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "No space left on device" in errors[0].getMessage()


def test_interrupted_run_leaves_previous_outputs_intact(quick_run, tmp_path):
    out = tmp_path / "outputs"
    shutil.copytree(quick_run["out"], out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    proc = subprocess.Popen(  # nosec B603 - this interpreter, our script, test-chosen arguments
        [sys.executable, str(SCRIPT), *quick_run["args"], "--no-cache", "--output-dir", str(out)],
        cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "== train baseline ..." in line:
            proc.send_signal(signal.SIGINT)
            break
    _, rest = proc.communicate(timeout=120)
    stderr = "".join(seen) + rest
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    assert len([line for line in stderr.splitlines() if " ERROR " in line]) == 1
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert set(after) - set(before) == {pathlib.Path("run_failed.log")}, "only the failed run's log is new"
    assert all(after[name] == data for name, data in before.items()), "a previous output changed"
    assert "interrupted" in (out / "run_failed.log").read_text()
