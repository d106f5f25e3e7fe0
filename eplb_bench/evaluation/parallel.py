"""Where independent units of work run: in this process, on local worker processes, or on
an existing Dask cluster. `run`, `evaluate` and `bounds` all get their executor here.

**Timing that stays honest with several jobs.** A local worker is pinned to one core of
its own (`os.sched_setaffinity`) with its pools sized to the run's `--threads`, so two
jobs never time each other on one core; `--jobs` larger than the cores this process may
use is refused. What a job shared (the memory bus, the last-level cache) is not gone:
each record says how many jobs ran at once and on which cores (`host.concurrent_jobs`,
`host.cpu_affinity`), and the leaderboard names the concurrency with the machine. A Dask
cluster is the user's: its workers are not pinned, so start them one thread each
(`dask worker --nthreads 1`), one per core; the records carry the cluster's thread count.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent import futures
from typing import Callable, Sequence

from eplb_bench.core.machine import usable_cores

DASK_PREFIX = "dask://"


class ExecutorError(RuntimeError):
    """An executor that cannot be had: a bad address, too many jobs, no dask.distributed."""


def check_executor(jobs: int, address: str | None) -> None:
    """ExecutorError unless `jobs` local processes (or the cluster at `address`) can be used."""
    if address is not None:
        if not address.startswith(DASK_PREFIX) or not address[len(DASK_PREFIX):]:
            raise ExecutorError(f"--executor expects dask://HOST:PORT, got {address!r}")
        return
    if jobs < 1:
        raise ExecutorError("--jobs must be at least 1")


def pin_worker(cores, threads: int | None) -> None:
    """A worker's initializer: take one core of the queue `cores` and size the pools
    (`threads`, else one: the core's), for the worker and the sandboxes it starts, which
    are confined to that core by a cpuset cgroup where one can be made."""
    from eplb_bench.core.machine import fix_threads

    os.sched_setaffinity(0, {cores.get()})
    fix_threads(threads or 1)


def open_executor(jobs: int, address: str | None = None, pin: bool = False, threads: int | None = None):
    """(executor, Dask client or None, concurrency): `jobs` local processes, or the
    executor of the Dask cluster at dask://HOST:PORT.

    `pin`: each local worker takes a core of its own (module docstring); ExecutorError
    when there are fewer usable cores than jobs. `threads`: the pool size of each worker.
    """
    check_executor(jobs, address)
    if address is None:
        context = multiprocessing.get_context("forkserver")
        if not pin:
            return futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context), None, jobs
        cores = usable_cores()
        if jobs > len(cores):
            raise ExecutorError(f"--jobs {jobs} is more than the {len(cores)} core(s) this process may use: "
                                "jobs would share cores and time each other")
        queue = context.Queue()
        for core in cores[:jobs]:
            queue.put(core)
        executor = futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=pin_worker,
                                               initargs=(queue, threads))
        return executor, None, jobs
    try:
        from distributed import Client
    except ImportError:
        raise ExecutorError("--executor dask://...: dask.distributed is not installed "
                            "(pip install 'eplb-bench[dask]')") from None
    try:
        client = Client(address[len(DASK_PREFIX):], timeout=30)
    except (OSError, TimeoutError) as exc:
        raise ExecutorError(f"no Dask scheduler at {address}: {' '.join(str(exc).split())}") from None
    return client.get_executor(), client, max(1, sum(client.nthreads().values()))


def close_executor(executor, client, wait: bool = True) -> None:
    """Let go of what open_executor gave, cancelling whatever has not started; `wait`
    for the local workers to finish what they run."""
    if client is not None:
        client.close()   # the Dask executor goes with its client
    elif executor is not None:
        executor.shutdown(wait=wait, cancel_futures=True)


def map_units(function: Callable, units: Sequence[tuple], jobs: int = 1, address: str | None = None,
              threads: int | None = None, done: Callable[[int, object], None] | None = None) -> list:
    """[function(*unit, concurrency) for unit in units], in order: in this process when
    `jobs` is 1 and there is no cluster, else on pinned local workers (open_executor) or
    the Dask cluster at `address`. `concurrency` is how many units may run at once;
    `done(index, result)` sees each result as its unit finishes."""
    results: list = [None] * len(units)
    if jobs == 1 and address is None:
        for index, unit in enumerate(units):
            results[index] = function(*unit, 1)
            if done is not None:
                done(index, results[index])
        return results
    pool, client, concurrency = open_executor(jobs, address, pin=address is None, threads=threads)
    try:
        pending = {pool.submit(function, *unit, concurrency): index for index, unit in enumerate(units)}
        for future in futures.as_completed(pending):
            index = pending[future]
            results[index] = future.result()
            if done is not None:
                done(index, results[index])
    finally:
        close_executor(pool, client)
    return results
