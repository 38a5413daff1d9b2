"""Where ingest's per-batch work runs: in this process, or on a Dask cluster (``ingest.engine``).

An engine maps a function over a stream of argument tuples and yields the results in input order, with a
bounded number of batches in flight, so memory stays flat however long the stream is. A new engine is a class
registered in ``ENGINES`` under the name ``ingest.engine.kind`` takes.

Dask, because it is a library and a cluster at once: the same ``distributed.Client`` drives a
``LocalCluster`` of worker processes on one machine (the tests, a laptop) and a scheduler on many machines
(``ingest.engine.address: tcp://scheduler:8786``, or dask-kubernetes / dask-jobqueue behind it), it ships plain
Python functions and objects, and Prefect's own ``prefect-dask`` task runner speaks to the same scheduler.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Iterable, Iterator

from lmops.config import EngineParams


class InProcess:
    """This process, no start-up cost: the default, and right for anything that ingests in seconds. Batches are
    cleaned by ``threads`` threads at once (0: one per core) where the work releases the GIL, which the text kernels
    do on long texts (``inline`` says which batches are not such work: those run on the calling thread, since two
    threads running Python only take turns, and the turns cost). Results come back in input order."""

    in_process = True  # work mapped here can share this process's objects (a GX context) instead of building its own

    def __init__(self, params: EngineParams):
        import os

        self.workers = params.threads or os.cpu_count() or 1
        self._window = params.in_flight_per_worker * self.workers
        self._pool = None

    def map(self, fn: Callable[..., Any], args: Iterable[tuple], inline: Callable[[tuple], bool] | None = None) -> Iterator[Any]:
        if self.workers == 1:
            for a in args:
                yield fn(*a)
            return
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="lmops-engine")
        pending: deque = deque()
        try:
            for a in args:
                if inline is not None and inline(a):
                    while pending:  # (what was submitted before it comes first)
                        yield pending.popleft().result()
                    yield fn(*a)
                    continue
                pending.append(self._pool.submit(fn, *a))
                if len(pending) >= self._window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # an error or an abandoned map: what was queued is not started
            for f in pending:
                f.cancel()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class DaskEngine:
    """A Dask ``distributed`` cluster: ``address`` connects to a running scheduler; without it a
    ``LocalCluster`` of ``workers`` single-threaded processes starts here (and stops on ``close``)."""

    in_process = False

    def __init__(self, params: EngineParams):
        from distributed import Client, LocalCluster

        self._cluster = None
        if params.address:
            self._client = Client(params.address, timeout=params.connect_timeout_s)
        else:
            # processes, one thread each: the batch work is pure Python and holds the GIL
            self._cluster = LocalCluster(n_workers=params.workers, threads_per_worker=1, processes=True,
                                         dashboard_address=None, memory_limit=params.worker_memory)
            self._client = Client(self._cluster)
        self.workers = max(1, len(self._client.scheduler_info().get("workers", {})) or params.workers)
        self._window = params.in_flight_per_worker * self.workers

    def map(self, fn: Callable[..., Any], args: Iterable[tuple], inline: Callable[[tuple], bool] | None = None) -> Iterator[Any]:
        pending: deque = deque()
        for a in args:
            pending.append(self._client.submit(fn, *a, pure=False))
            if len(pending) >= self._window:
                yield _result(pending.popleft())
        while pending:
            yield _result(pending.popleft())

    def close(self) -> None:
        self._client.close()
        if self._cluster is not None:
            self._cluster.close()


def _result(future) -> Any:
    try:
        return future.result()
    finally:
        future.release()


class Borrowed:
    """An engine that is already running, lent to one ingest or validation: ``close`` leaves it running (a
    long-lived cluster serves many runs; benchmarks start theirs before the clock)."""

    def __init__(self, engine):
        self.engine, self.workers, self.in_process = engine, engine.workers, engine.in_process

    def map(self, fn: Callable[..., Any], args: Iterable[tuple], inline: Callable[[tuple], bool] | None = None) -> Iterator[Any]:
        return self.engine.map(fn, args, inline)

    def close(self) -> None:
        pass


ENGINES: dict[str, type] = {"local": InProcess, "dask": DaskEngine}


def open_engine(params: EngineParams):
    return ENGINES[params.kind](params)
