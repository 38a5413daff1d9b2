"""Exclusive sections that hold across processes and, with a Prefect server, across machines.

A file lock under LMOPS_HOME serializes the processes of one machine; a worker that runs each flow in a fresh
clone has its own LMOPS_HOME, so when a Prefect server is configured the section is also a lease on it (a
global concurrency limit of 1) that every machine of the team sees. The embedded per-process Prefect API has
nothing to share: no lease then.

A holder killed with SIGKILL keeps its lease until the server's repossessor service revokes it (lease expiry,
60 s at least). Prefect's *ephemeral* servers (the embedded API, ``prefect_test_harness``) run no repossessor,
so there a dead holder's lease is never returned: ``LMOPS_SERVER_LEASES=off`` turns leases off where all runs
share one LMOPS_HOME anyway (the file lock then does the job).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


@contextmanager
def file_lock(path: Path, timeout_s: float, what: str, holder: Callable[[], str] | None = None) -> Iterator[None]:
    """An OS file lock on ``path`` (released by the kernel when its process dies); a wait over ``timeout_s`` is a
    TransientError naming ``what`` and, when ``holder`` says, who holds it."""
    from filelock import FileLock, Timeout

    from lmops.errors import TransientError

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=timeout_s)
    except Timeout as exc:
        by = holder() if holder else "another run"
        raise TransientError(f"{what} ({path}) held for over {timeout_s:.0f}s by {by}; retry") from exc
    try:
        yield
    finally:
        lock.release()


@contextmanager
def exclusive(key: str, timeout_s: float, what: str = "this section") -> Iterator[None]:
    """Hold ``key`` (a file lock under LMOPS_HOME, then the server lease)."""
    from lmops.env import lmops_home

    with file_lock(lmops_home() / "locks" / f"{key}.lock", timeout_s, what), shared_lease(f"lmops-{key}", timeout_s, what=what):
        yield


@contextmanager
def shared_lease(key: str, timeout_s: float, lease_s: float = 60, what: str = "this section") -> Iterator[None]:
    """One holder of ``key`` across machines: a Prefect global concurrency limit of 1 on the configured server.
    The slot is a lease the holder renews; a holder killed with SIGKILL loses it after ``lease_s``."""
    import os

    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value() or os.environ.get("LMOPS_SERVER_LEASES", "auto").lower() in {"off", "0", "false"}:
        yield
        return
    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists

    from lmops.errors import TransientError

    with get_client(sync_client=True) as c:
        try:
            c.upsert_global_concurrency_limit_by_name(key, 1)
        except ObjectAlreadyExists:  # another machine created it between the read and the create
            pass
    entered = False
    try:
        with concurrency(key, occupy=1, timeout_seconds=timeout_s, lease_duration=lease_s, strict=True):
            entered = True
            yield
    except TimeoutError as exc:
        if entered:
            raise
        raise TransientError(f"{what}: the lease {key!r} on the Prefect server was held for over {timeout_s:.0f}s by another run; "
                             "retry") from exc
