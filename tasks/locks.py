"""Exclusive sections that hold across processes and, with a Prefect server, across machines.

A file lock under LMOPS_HOME serializes the processes of one machine; a worker that runs each flow in a fresh
clone has its own LMOPS_HOME, so when a Prefect server is configured the section is also a lease on it (a
global concurrency limit of 1) that every machine of the team sees. The embedded per-process Prefect API has
nothing to share: no lease then.

A holder killed with SIGKILL keeps its lease until the server's repossessor service revokes it (lease expiry,
60 s at least). Prefect's *ephemeral* servers (the embedded API, ``prefect_test_harness``) run no repossessor,
so there a dead holder's lease is never returned: ``LMOPS_SERVER_LEASES=off`` turns leases off where all runs
share one LMOPS_HOME anyway (the file lock then does the job).

Machines that share only an MLflow registry (``MLFLOW_TRACKING_URI`` set, no Prefect server between them) hold
the section as a lock *in that registry* (:class:`RegistryMutex`): the one operation MLflow's store makes atomic
is creating a registered model under a name that must be unique, so the lock is a registered model named
``lmops-lock.<key>``, renewed by its holder and taken over once it has not been renewed for its lease.
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

    with file_lock(lmops_home() / "locks" / f"{key}.lock", timeout_s, what), shared_lease(f"lmops-{key}", timeout_s, what=what), \
            registry_mutex(key, timeout_s, what=what):
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


LOCK_PREFIX = "lmops-lock."  # registered models with this prefix are locks, not models (hidden from lmops' listings)
_TOKEN, _HOLDER, _EXPIRES = "lmops.lock.token", "lmops.lock.holder", "lmops.lock.expires"


def is_lock(model_name: str) -> bool:
    return model_name.startswith(LOCK_PREFIX)


@contextmanager
def registry_mutex(key: str, timeout_s: float, lease_s: float = 60, what: str = "this section") -> Iterator[None]:
    """One holder of ``key`` among every machine that shares the MLflow registry. Only where the registry is
    shared (``MLFLOW_TRACKING_URI`` names another registry than the embedded one): the embedded registry lives
    under LMOPS_HOME, where the file lock already serializes its users. ``LMOPS_REGISTRY_LOCKS=off`` turns it off."""
    import os

    if not registry_is_shared() or os.environ.get("LMOPS_REGISTRY_LOCKS", "auto").lower() in {"off", "0", "false"}:
        yield
        return
    from mlflow.tracking import MlflowClient

    uri = os.environ["MLFLOW_TRACKING_URI"]  # a shared registry: its schema is its server's business, not ours to create
    mutex = RegistryMutex(MlflowClient(tracking_uri=uri, registry_uri=uri), key, lease_s)
    mutex.acquire(timeout_s, what)
    try:
        yield
    finally:
        mutex.release()


def registry_is_shared() -> bool:
    """``MLFLOW_TRACKING_URI`` names a registry other than this LMOPS_HOME's embedded SQLite file. (MLflow's own
    ``set_tracking_uri`` exports the variable, so its presence alone says nothing: every child of a process that
    opened the embedded registry inherits it.)"""
    import os

    from lmops.env import embedded_tracking_uri

    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    return bool(uri) and uri != embedded_tracking_uri()


class RegistryMutex:
    """A lease kept as a registered model in a shared MLflow registry.

    - acquire: create ``lmops-lock.<key>`` (the store refuses a second model of that name: exactly one creator
      wins); tags name the holder, a token and when the lease expires.
    - hold: a daemon thread renews the expiry every quarter lease; a holder killed with SIGKILL stops renewing.
    - take over: a lock past its expiry is renamed to ``lmops-lock.<key>.stale.<its token>``. Two waiters that saw
      the same dead lock race for that one name, so only one removes it; the loser finds the name taken and waits
      again. The winner checks that it renamed the lock it saw (the token): if a release and a fresh acquire
      happened in between, it renames the fresh lock back.
    - release: delete the lock if it is still ours.

    As with every lease, a holder stalled for longer than the lease (no renewal, e.g. a stopped VM) loses it;
    renewal then logs that the lock was lost.
    """

    def __init__(self, client, key: str, lease_s: float = 60, poll_s: float = 0.5):
        import os
        import socket
        import threading
        import uuid

        self.c, self.name, self.lease_s, self.poll_s = client, f"{LOCK_PREFIX}{key}", lease_s, poll_s
        self.token = uuid.uuid4().hex
        self.holder = f"pid {os.getpid()} on {socket.gethostname()}"
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self.lost = False

    def _tags(self) -> dict[str, str]:
        import time

        return {_TOKEN: self.token, _HOLDER: self.holder, _EXPIRES: f"{time.time() + self.lease_s:.3f}"}

    def try_acquire(self) -> tuple[bool, str]:
        """(True, "") if acquired; else (False, who holds it)."""
        import time

        from mlflow.exceptions import MlflowException

        try:
            self.c.create_registered_model(self.name, tags={**self._tags(), "lmops.lock": "1"},
                                           description=f"lmops lock, held by {self.holder}; not a model")
            return True, ""
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":  # lost to a creator whose lock was gone again when the store looked
                return False, ""
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        try:
            held = self.c.get_registered_model(self.name)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":  # released between the two calls: try again at once
                return False, ""
            raise
        tags = held.tags or {}
        expires = float(tags.get(_EXPIRES) or held.creation_timestamp / 1000 + self.lease_s)
        if time.time() > expires:
            self._take_over(tags.get(_TOKEN, ""))
            return False, ""
        return False, tags.get(_HOLDER, "another run")

    def _take_over(self, seen: str) -> None:
        from mlflow.exceptions import MlflowException

        tomb = f"{self.name}.stale.{seen or 'untagged'}"
        try:
            self.c.rename_registered_model(self.name, tomb)
        except MlflowException as exc:
            # another waiter removed it first (the fence name is taken, or its concurrent update won: the store
            # rolls ours back and says BAD_REQUEST), or it was released
            if exc.error_code in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST", "BAD_REQUEST"):
                return
            raise
        if (self.c.get_registered_model(tomb).tags or {}).get(_TOKEN, "") != seen:
            try:  # released and re-taken in between: that fresh lock is not ours to remove
                self.c.rename_registered_model(tomb, self.name)
            except MlflowException:
                pass
            return
        print(f"lmops: took over the lock {self.name} whose holder stopped renewing it ({seen})")

    def acquire(self, timeout_s: float, what: str) -> None:
        import random
        import threading
        import time

        from lmops.errors import TransientError

        deadline = time.time() + timeout_s
        while True:
            ok, by = self.try_acquire()
            if ok:
                break
            if time.time() >= deadline:
                raise TransientError(f"{what}: the lock {self.name!r} in the shared MLflow registry was held for over {timeout_s:.0f}s by "
                                     f"{by or 'another run'}; retry")
            time.sleep(self.poll_s * (0.5 + random.random()) if by else 0.05)
        self._sweep()
        self._renewer = threading.Thread(target=self._renew, name=f"renew {self.name}", daemon=True)
        self._renewer.start()

    def _mine(self) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            return (self.c.get_registered_model(self.name).tags or {}).get(_TOKEN) == self.token
        except MlflowException:
            return False

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 4):
            try:
                if not self._mine():
                    self.lost = True
                    print(f"lmops: lost the lock {self.name} (not renewed within {self.lease_s:.0f}s)")
                    return
                self.c.set_registered_model_tag(self.name, _EXPIRES, self._tags()[_EXPIRES])
            except Exception as exc:  # noqa: BLE001 - a registry hiccup: the next renewal tries again within the lease
                print(f"lmops: renewing the lock {self.name} failed ({exc}); retrying")

    def release(self) -> None:
        from mlflow.exceptions import MlflowException

        self._stop.set()
        if self._renewer:
            self._renewer.join()
        if self._mine():
            try:
                self.c.delete_registered_model(self.name)
            except MlflowException:
                pass

    def _sweep(self, older_than_s: float = 3600) -> None:
        """Delete this lock's tombstones older than an hour (no waiter still holds a view of them that old)."""
        import time

        try:
            for rm in self.c.search_registered_models(filter_string=f"name LIKE '{self.name}.stale.%'"):
                if rm.creation_timestamp / 1000 < time.time() - older_than_s:
                    self.c.delete_registered_model(rm.name)
        except Exception:  # noqa: BLE001 - housekeeping only
            pass
