"""A background thread that delivers MLflow writes in order, so callers never wait on the tracking server.

The sweep driver's trial logger runs inside Tune's event loop: a synchronous MLflow call there stalls
every trial while a tracking server is down (30-67 s of retries per call were measured). Writes go
into a bounded queue instead; one thread delivers them in order and retries connection-type failures
with backoff for as long as it takes. A run is created by a write too: the caller gets a `RunRef` at
once, whose id the thread fills in before it delivers any later write that names it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from tracking.store import Store, is_transient

log = logging.getLogger(__name__)

Write = Callable[[Store], None]
_STOP = object()


class RunRef:
    """The id of a run the writer creates (or finds); None until its write has been delivered."""

    __slots__ = ("id",)

    def __init__(self, run_id: str | None = None) -> None:
        self.id = run_id

    def __repr__(self) -> str:
        return f"RunRef({self.id!r})"


class BackgroundWriter:
    """Delivers `submit`ted writes (functions of a `Store`) in order on one daemon thread.

    A write that fails with a connection-type error (`tracking.store.is_transient`) is retried, with
    the queue held behind it so the order is kept, from `delay` doubling up to `max_delay`; a warning
    names the outage when it starts and every `warn_every` seconds while it lasts. A write that fails
    otherwise (a bug, not an outage) is logged and dropped, so it cannot hold up the others.
    `maxsize` bounds the queue; when it is full, `submit` waits (nothing is dropped).
    """

    def __init__(
        self,
        uri: str,
        maxsize: int = 10_000,
        delay: float = 0.5,
        max_delay: float = 15.0,
        warn_every: float = 60.0,
        store_factory: Callable[[str], Store] | None = None,
    ) -> None:
        self.uri = uri
        self.delay = delay
        self.max_delay = max_delay
        self.warn_every = warn_every
        self.delivered = 0
        self.dropped = 0
        self._store_factory = store_factory or (lambda u: Store(u, attempts=1))
        self._store: Store | None = None
        self._queue: queue.Queue = queue.Queue(maxsize)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def pending(self) -> int:
        """Writes submitted and not yet delivered (or dropped)."""
        return self._queue.unfinished_tasks

    def submit(self, write: Write) -> None:
        """Queue `write`; returns at once unless the queue is full."""
        self._start()
        try:
            self._queue.put_nowait(write)
        except queue.Full:
            log.warning("MLflow write queue full (%d); waiting for %s", self._queue.maxsize, self.uri)
            self._queue.put(write)

    def flush(self, timeout: float | None = None) -> int:
        """Wait until every queued write is delivered or `timeout` seconds pass; returns the writes left."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._queue.all_tasks_done.wait(left)
            return self._queue.unfinished_tasks

    def close(self, timeout: float | None = None) -> int:
        """Flush (up to `timeout`), then stop the thread; returns the writes that were not delivered."""
        left = self.flush(timeout)
        if self._thread is not None and not left:  # else the daemon thread keeps trying while the process lives
            self._queue.put(_STOP)
            self._thread.join(timeout=5)
            self._thread = None
        return left

    # ------------------------------------------------------------ the thread
    def _start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="mlflow-writer", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        while True:
            write = self._queue.get()
            try:
                if write is _STOP:
                    return
                self._deliver(write)
            finally:
                self._queue.task_done()

    def _deliver(self, write: Write) -> None:
        delay, down_since, warned = self.delay, None, 0.0
        while True:
            try:
                if self._store is None:
                    self._store = self._store_factory(self.uri)
                write(self._store)
                self.delivered += 1
                if down_since is not None:
                    log.warning(
                        "MLflow at %s is reachable again after %.0fs; delivering %d queued write(s)",
                        self.uri,
                        time.monotonic() - down_since,
                        self.pending,
                    )
                return
            except Exception as exc:  # noqa: BLE001 - an outage is retried, anything else dropped with a warning
                if not is_transient(exc):
                    self.dropped += 1
                    log.warning("MLflow write to %s failed and was dropped: %s", self.uri, exc)
                    return
                now = time.monotonic()
                if down_since is None:
                    down_since = warned = now
                    log.warning(
                        "MLflow at %s is unreachable (%s); %d write(s) queued, retried in the background",
                        self.uri,
                        exc,
                        self.pending,
                    )
                elif now - warned >= self.warn_every:
                    warned = now
                    log.warning(
                        "MLflow at %s still unreachable after %.0fs; %d write(s) queued",
                        self.uri,
                        now - down_since,
                        self.pending,
                    )
            time.sleep(delay)
            delay = min(delay * 2, self.max_delay)
