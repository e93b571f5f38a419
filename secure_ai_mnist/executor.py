"""Where independent work runs (a study's seeds, the sweep's and the matrix's points): in this
process one item after another (the default), or as Ray tasks on a local Ray instance
(--workers N) or on a running Ray cluster (--ray-address).

We schedule nothing ourselves: Ray places the tasks, retries a task whose worker died
(TASK_RETRIES times), and returns the results in the order of the items. Ray is imported only
here and only when asked for, so the default run needs no service and does not import it.
One run connects to Ray once: the first call of ``run_tasks`` starts (or joins) it and
``ray_session`` shuts it down when the run ends, so the sweep's and the matrix's several rounds
of tasks share one instance and its workers, which keep TensorFlow loaded between tasks.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from .common import LOG, UserError
from .provenance import PROJECT_ROOT

Item = TypeVar("Item")
TASK_RETRIES = 3


def uses_ray(workers: int, address: str) -> bool:
    return workers > 0 or bool(address)


def run_tasks(work: Callable[..., Any], items: Sequence[Item], workers: int = 0, address: str = "",
              shared: Any = None) -> list[Any]:
    """``work(item)`` (or ``work(item, shared)`` when ``shared`` is given) for every item, results in
    item order. Serial in this process when ``workers`` is 0 and ``address`` empty; otherwise one
    Ray task per item (one CPU each), on a local Ray instance with ``workers`` CPUs, or on the
    cluster at ``address`` ("auto" or HOST:PORT). ``shared`` (say, the training set) is put in
    Ray's object store once, not copied into every task. ``work`` must be importable by the
    workers (a module-level function)."""
    extra = () if shared is None else (shared,)
    if not uses_ray(workers, address) or not items:
        return [work(item, *extra) for item in items]
    try:
        import ray
    except ImportError as exc:
        raise UserError("--workers and --ray-address need Ray: pip install 'ray[default]'") from exc
    if not ray.is_initialized():  # a run's later rounds reuse the instance (and its idle workers)
        # Workers on this machine import the project from its checkout; on other nodes it must be installed there too.
        ray.init(address=address or "local", num_cpus=None if address else workers, include_dashboard=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(PROJECT_ROOT)}}, log_to_driver=True)
        LOG.info("Ray: connected to %s for the rest of this run", address or "a new local instance")
    LOG.info("Ray: %d tasks on %s (%s CPUs)", len(items), address or "a local instance",
             ray.cluster_resources().get("CPU"))
    remote = ray.remote(num_cpus=1, max_retries=TASK_RETRIES)(work)
    refs = tuple(ray.put(value) for value in extra)
    return ray.get([remote.remote(item, *refs) for item in items])


@contextmanager
def ray_session() -> Iterator[None]:
    """Around one run: on exit, shut down the Ray connection that ``run_tasks`` opened inside, if
    any (a run that used no Ray never imports it)."""
    try:
        yield
    finally:
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            ray.shutdown()
