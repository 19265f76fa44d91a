"""A process pool for the per-subscriber work that keeps a CPU busy: file downloads (boto3 spends CPU on
every request), aggregation (pandas, Pillow) and rendering (reportlab).

These libraries hold the GIL for most of their work, so threads would not use a second core. The pool
runs chunk functions: a list of items in, one result per item out, an exception standing in for the
result of an item that failed, so one poison subscriber never fails a batch (`each` makes one from a
per-item function). `start` returns at once: a step hands the pool its next batch while it stores the last.
"""

from __future__ import annotations

import contextlib
import multiprocessing.context
import os
import select
import sys
import threading
import time
import types
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from functools import partial

from reporting_pipeline.operations.dead_letters import carry
from reporting_pipeline.services.retry import captured


def _each(fn: Callable, items: Sequence) -> list:
    return [captured(fn, item) for item in items]


def _exit_with_parent(parent: int) -> None:
    """Worker initializer: exit once the run's process is gone.

    A killed run process (SIGKILL, OOM) leaves its workers blocked on a queue they hold both ends
    of, so they would never see end-of-file; in a pod they die with it, elsewhere they would linger.
    A pidfd becomes readable when the process exits: no polling (Linux 5.3+; elsewhere, a 1 s poll).
    """
    def watch():
        try:
            fd = os.pidfd_open(parent)
        except (AttributeError, OSError):
            while _alive(parent):
                time.sleep(1)
        else:
            select.select([fd], [], [])
        os._exit(1)

    if not _alive(parent):
        os._exit(1)
    threading.Thread(target=watch, name="exit-with-run", daemon=True).start()


def _start_worker(parent: int, warm_up: Callable[[], None] | None) -> None:
    """Worker initializer: exit with the run's process, then get ready for the first chunk (`warm_up`)."""
    _exit_with_parent(parent)
    if warm_up is not None:
        # Only a head start: what fails here fails again where a chunk needs it, and is reported there.
        # (An initializer that raised would break the whole pool.)
        with contextlib.suppress(Exception):
            warm_up()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _carried(fn: Callable, items: Sequence) -> list:
    """Runs in the worker: `fn`'s results, each able to cross back through pickle."""
    return [carry(result) for result in fn(items)]


def each(fn: Callable) -> Callable[[Sequence], list]:
    """A chunk function applying the per-item `fn` to each item (picklable when `fn` is)."""
    return partial(_each, fn)


class Pending:
    """The results of one `WorkerPool.start`, in item order; `results()` waits for them."""

    def __init__(self, fn: Callable, items: Sequence, futures: list[Future] | None = None):
        self._fn, self._items, self._futures = fn, items, futures

    def results(self) -> list:
        if self._futures is None:
            return self._fn(self._items)  # no pool: computed here, when asked for
        return [result for future in self._futures for result in future.result()]


# Workers are forked from a server process that imported these once: a worker then starts in
# milliseconds instead of paying a second of imports (pandas, reportlab, boto3) each. The server is
# spawned clean, not forked from the run's process, whose threads (pymongo, boto3) a fork could copy
# mid-lock. One server per run process, shared by every pool it starts. (An ImportError here is
# ignored by multiprocessing: each worker would then import on its own.)
PRELOAD = ["reporting_pipeline.stages.worker_preload"]


class _Worker(multiprocessing.context.ForkServerProcess):
    """A worker process that does not run the parent's main module.

    multiprocessing has each forkserver (or spawn) child run the parent's `__main__` first, as `__mp_main__`,
    unless that is a package's `__main__` (`python -m pkg`). A run pod's is the `dagster` command:
    K8sRunLauncher's Job starts `dagster api execute_run`, a script whose first line is
    `from dagster._cli import main`. Every worker imported all of Dagster, over a CPU-second and 45 MiB each,
    for nothing. So `__main__` is out of sight while a worker starts (chunk functions never live there).
    """

    _swapping = threading.Lock()  # two pools starting workers at once must not restore each other's stand-in

    def start(self):
        with self._swapping:
            main = sys.modules["__main__"]
            sys.modules["__main__"] = types.ModuleType("__main__")  # no __file__ nor __spec__: nothing to run
            try:
                super().start()
            finally:
                sys.modules["__main__"] = main


class _Context(multiprocessing.context.ForkServerContext):
    Process = _Worker


def _context():
    context = _Context()
    context.set_forkserver_preload(PRELOAD)
    return context


class WorkerPool:
    """`workers` worker processes, started when a batch first needs them and shared by all later batches.

    `workers=1`, or a batch too small to be worth shipping, runs in this process. `warm_up` (picklable) runs in
    each worker as it starts, while this process fetches the first batch.
    """

    def __init__(self, workers: int = 1, warm_up: Callable[[], None] | None = None):
        self.workers = max(1, workers)
        self._warm_up = warm_up
        self._pool: ProcessPoolExecutor | None = None

    @property
    def started(self) -> bool:
        return self._pool is not None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=_context(),
                                             initializer=_start_worker, initargs=(os.getpid(), self._warm_up))
        return self._pool

    def start(self, fn: Callable[[Sequence], list], items: Sequence) -> Pending:
        """Begin the chunk function `fn` on `items`; `fn` must be picklable (a module function or a partial of one)."""
        if self.workers == 1 or len(items) < 2 * self.workers:
            return Pending(fn, items)
        # Two chunks per worker: enough to even out the workers, few enough for a vectorized `fn` to pay off.
        size = max(1, -(-len(items) // (self.workers * 2)))
        chunks = [items[i:i + size] for i in range(0, len(items), size)]
        return Pending(fn, items, [self._executor().submit(_carried, fn, chunk) for chunk in chunks])

    def map(self, fn: Callable[[Sequence], list], items: Sequence) -> list:
        """`start(fn, items).results()`."""
        return self.start(fn, items).results()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def lookahead(batches, begin: Callable):
    """Yield `(batch, begin(batch))`, having already begun the next batch: the pool works while the caller stores."""
    previous = None
    for batch in batches:
        started = (batch, begin(batch))
        if previous is not None:
            yield previous
        previous = started
    if previous is not None:
        yield previous

