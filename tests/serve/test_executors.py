"""serve/executors.py on its own: per-organisation caps, turns in round-robin, the wait limit."""

from __future__ import annotations

import threading
import time

import pytest

from tunesmith.serve.errors import APIError
from tunesmith.serve.executors import FairExecutor


def test_a_free_thread_goes_to_the_organisation_served_least_recently():
    executor = FairExecutor("test", threads=1, per_org=10)
    gate, order = threading.Event(), []
    executor.submit("hold", gate.wait)  # the one thread is busy while the queue fills
    time.sleep(0.1)
    futures = [executor.submit(org, order.append, f"{org}{i}") for org, i in [("a", 1), ("a", 2), ("a", 3), ("b", 1)]]
    futures.append(executor.submit("c", order.append, "c1"))
    gate.set()
    for future in futures:
        future.result(timeout=5)
    assert order == ["a1", "b1", "c1", "a2", "a3"]
    executor.shutdown()


CAPS = [  # (per_org, calls one organisation submits at once, how many are refused)
    (1, 3, 2),
    (2, 2, 0),
    (3, 5, 2),
]


@pytest.mark.parametrize("per_org, calls, refused", CAPS)
def test_calls_over_the_organisations_cap_get_429_with_retry_after(per_org, calls, refused):
    executor = FairExecutor("embeddings", threads=1, per_org=per_org)
    gate, errors = threading.Event(), []
    for _ in range(calls):
        try:
            executor.submit("a", gate.wait)
        except APIError as error:
            errors.append(error)
    other = executor.submit("b", lambda: "b ran")  # another organisation is not refused
    gate.set()
    assert other.result(timeout=5) == "b ran"
    assert [(e.status, e.type, e.headers) for e in errors] == [
        (429, "rate_limit_error", {"Retry-After": "1"})
    ] * refused
    assert all(f"{per_org} embeddings requests in progress" in e.message for e in errors)
    executor.shutdown()


def test_a_call_that_waited_past_the_limit_is_refused_with_503_not_run():
    executor = FairExecutor("inference", threads=1, per_org=5, max_wait=0.2)
    ran = []
    executor.submit("a", time.sleep, 0.5)
    late = executor.submit("b", ran.append, "late")
    with pytest.raises(APIError) as caught:
        late.result(timeout=5)
    assert caught.value.status == 503 and caught.value.headers == {"Retry-After": "1"}
    assert "waited" in caught.value.message and ran == []
    assert executor.admitted("b") == 0  # its place is given back
    executor.shutdown()
