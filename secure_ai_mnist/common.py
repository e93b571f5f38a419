"""Shared plumbing: errors, logging, stage timing, hashing and atomic file writes."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

LOG = logging.getLogger("secure_ai_mnist")


NUM_CLASSES = 10


IMAGE_SHAPE = (28, 28, 1)


class UserError(Exception):
    """A problem the user can fix; reported as one line, exit code 2."""


class ConfigError(UserError):
    """An invalid command-line value."""


class DataError(UserError):
    """Missing, corrupt or unverifiable MNIST data."""


class TimeBudgetError(UserError):
    """Work that would pass its time budget on this machine: refused, never shortened."""


class AttackBoundError(RuntimeError):
    """An adversarial example left the epsilon ball or the [0, 1] pixel range."""


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with its C++ start-up lines kept off the console. They are written to
    file descriptor 2 while the library loads, before TF_CPP_MIN_LOG_LEVEL or absl logging take
    effect; the one that matters to a user (oneDNN kernels) is logged here in our words."""
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    if os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1") != "0":
        LOG.debug("TensorFlow uses oneDNN kernels: a run repeats digit for digit on the same kind of CPU; another "
                  "CPU can change the last digits of a computation, and so the trained weights")


def one_line(message: object) -> str:
    """``message`` as one line: library errors (NumPy's, for one) can span several."""
    return " ".join(str(message).split())


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)-7s %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        stream=sys.stderr,
        force=True,
    )


@contextlib.contextmanager
def stage(name: str, timings: dict[str, float]) -> Iterator[None]:
    """Log a pipeline stage and record its wall time in ``timings[name]`` (seconds)."""
    LOG.info("== %s ...", name)
    start = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - start, 3)
    LOG.info("== %s done in %.1f s", name, timings[name])


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it over ``path`` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def prepare_output_dir(output_dir: Path) -> dict[str, Path]:
    """Create output_dir/{images,models}, remove the temporary files of a killed earlier run (never
    a finished file), and prove the directory is writable before any work starts."""
    dirs = {"root": output_dir, "images": output_dir / "images", "models": output_dir / "models"}
    try:
        for d in dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        # atomic_path's names (.NAME.XXXX.tmp.SUFFIX) left by a run killed mid-write; the live run
        # log's (.run.XXXX.log.tmp) does not match
        for stale in output_dir.rglob(".*.tmp.*"):
            if stale.is_file():
                stale.unlink()
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".write-test."):
            pass
    except OSError as exc:
        raise UserError(f"output directory {output_dir} is not writable ({exc.strerror}); choose another with --output-dir") from exc
    return dirs


class RunLog:
    """Every log record of one run, timestamped, in ``path`` (``run.log``), or beside it as
    ``run_failed.log`` when the run fails. Records go to a hidden temporary file that is renamed
    when the run ends, so a previous run's log is only ever replaced by a complete one. When the
    directory cannot be written, the run goes on without a log file (and fails there anyway)."""

    def __init__(self, path: Path) -> None:
        self.path, self.tmp, self.handler = path, None, None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=".run.", suffix=".log.tmp", dir=path.parent)
            os.close(fd)
        except OSError:
            return
        self.tmp = Path(name)
        self.handler = logging.FileHandler(self.tmp, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%Y-%m-%dT%H:%M:%S%z"))
        logging.getLogger().addHandler(self.handler)

    def close(self, succeeded: bool) -> Path | None:
        """Detach the handler and rename the log into place; return its final path (or None)."""
        if self.handler is None or self.tmp is None:
            return None
        logging.getLogger().removeHandler(self.handler)
        self.handler.close()
        final = self.path if succeeded else self.path.with_name(self.path.stem + "_failed" + self.path.suffix)
        try:
            os.replace(self.tmp, final)
        except OSError:
            self.tmp.unlink(missing_ok=True)
            return None
        return final
