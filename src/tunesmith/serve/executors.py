"""Bounded, fair thread pools for the server's blocking work (embeddings, GGUF exports, upload
checks, job validation, generation).

Each kind of work has its own threads, so a flood of one kind never takes the threads that
another kind, or the management routes, need. Each organisation may have at most ``per_org``
calls admitted (waiting or running) in one executor; over that the call is refused at once with
429 and ``Retry-After``. A free thread takes the next call of the organisation served least
recently (round-robin), so an organisation with many calls waiting delays another's by at most
one call per thread. A call still waiting after ``max_wait`` seconds is answered 503 with
``Retry-After`` instead of running late. The threads run at a lower CPU priority (``NICENESS``)
than the event loop and the management routes' threads, so on a saturated CPU the cheap
requests still get their turn.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import Counter, OrderedDict, deque
from concurrent.futures import Future

from tunesmith.serve.errors import APIError, too_many

NICENESS = 10  # added to each executor thread's nice value (Linux: a thread's own priority)


def busy(what: str, waited: float, retry_after: int) -> APIError:
    """503 with ``Retry-After``: the server had no thread for the call in time."""
    return APIError(
        503,
        f"the server is busy: this {what} request waited {waited:.0f} s without starting; retry later",
        code="server_busy",
        headers={"Retry-After": str(retry_after)},
    )


class FairExecutor:
    def __init__(self, what: str, threads: int, per_org: int, max_wait: float | None = None, retry_after: int = 1):
        self.what, self.per_org, self.max_wait, self.retry_after = what, max(1, per_org), max_wait, retry_after
        self._cond = threading.Condition()
        self._waiting: OrderedDict[str, deque] = OrderedDict()  # organisations in turn order
        self._admitted: Counter[str] = Counter()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._serve, name=f"tunesmith-{what}-{i}", daemon=True)
            for i in range(max(1, threads))
        ]
        for thread in self._threads:
            thread.start()

    def admitted(self, org_id: str) -> int:
        with self._cond:
            return self._admitted[org_id]

    def check(self, org_id: str) -> None:
        """Raise the 429 now if ``org_id`` is at its cap: a route refuses before it reads a large body."""
        with self._cond:
            self._refuse_over_cap(org_id)

    def _refuse_over_cap(self, org_id: str) -> None:
        if self._closed:
            raise busy(self.what, 0, self.retry_after)
        if self._admitted[org_id] >= self.per_org:
            raise too_many(
                f"your organisation already has {self.per_org} {self.what} requests in progress; "
                "retry when one finishes",
                retry_after=self.retry_after,
            )

    def submit(self, org_id: str, fn, *args) -> Future:
        """Queue ``fn(*args)`` for ``org_id``; raises the 429 when the organisation is at its cap."""
        future: Future = Future()
        with self._cond:
            self._refuse_over_cap(org_id)
            self._admitted[org_id] += 1
            self._waiting.setdefault(org_id, deque()).append((future, fn, args, time.monotonic()))
            self._cond.notify()
        return future

    async def run(self, org_id: str, fn, *args):
        """``fn(*args)`` on this executor's threads, awaited. A caller that goes away while waiting
        gives its turn up; one that goes away while running leaves the call to finish."""
        return await asyncio.wrap_future(self.submit(org_id, fn, *args))

    def _next(self):
        with self._cond:
            while not self._waiting and not self._closed:
                self._cond.wait()
            if not self._waiting:
                return None
            org_id, queue = next(iter(self._waiting.items()))
            item = queue.popleft()
            del self._waiting[org_id]
            if queue:
                self._waiting[org_id] = queue  # its next call waits behind the other organisations'
            return org_id, item

    def _serve(self) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICENESS)
        except (AttributeError, OSError):  # not Linux, or not allowed: same priority as the rest
            pass
        while (picked := self._next()) is not None:
            org_id, (future, fn, args, queued) = picked
            try:
                outcome = self._call(future, fn, args, queued)
            finally:
                # Given back before the caller hears the result: a client that sends its next request
                # the moment it has its answer finds its organisation's slot free.
                with self._cond:
                    self._admitted[org_id] -= 1
                    if self._admitted[org_id] <= 0:
                        del self._admitted[org_id]
            if outcome is not None:
                succeeded, value = outcome
                future.set_result(value) if succeeded else future.set_exception(value)

    def _call(self, future: Future, fn, args, queued: float) -> tuple[bool, object] | None:
        """(True, result) or (False, error) of one call; None when its caller left while it waited."""
        if not future.set_running_or_notify_cancel():
            return None
        waited = time.monotonic() - queued
        if self.max_wait is not None and waited > self.max_wait:
            return False, busy(self.what, waited, self.retry_after)
        try:
            return True, fn(*args)
        except BaseException as error:
            return False, error

    def shutdown(self) -> None:
        """Refuse new calls and cancel the waiting ones; running calls finish on their own."""
        with self._cond:
            self._closed = True
            waiting = [item for queue in self._waiting.values() for item in queue]
            self._waiting.clear()
            self._cond.notify_all()
        for future, *_ in waiting:
            future.cancel()
