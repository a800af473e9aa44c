"""The outbox sends responses off the stepping thread: in order, past failures, nothing dropped."""

from __future__ import annotations

import threading

import pytest

from ddpm_triton.serving.outbox import Outbox, OutboxClosed


def test_posted_work_runs_in_order_on_the_outbox_thread_and_close_waits_for_it():
    outbox = Outbox("test-outbox")
    ran: list[tuple[int, str]] = []
    gate = threading.Event()
    outbox.post(gate.wait)  # holds the thread until every item is queued: close must still run them all
    for i in range(50):
        outbox.post(lambda i=i: ran.append((i, threading.current_thread().name)))
    gate.set()
    outbox.close()
    assert ran == [(i, "test-outbox") for i in range(50)]


def test_a_failing_send_is_logged_and_the_next_ones_still_run(caplog):
    outbox = Outbox("test-outbox")
    ran: list[int] = []

    def client_gone() -> None:
        raise ConnectionError("the client went away")

    outbox.post(lambda: ran.append(1))
    outbox.post(client_gone)
    outbox.post(lambda: ran.append(2))
    outbox.close()
    assert ran == [1, 2]
    assert "sending a response failed" in caplog.text and "the client went away" in caplog.text


def test_posting_after_close_is_an_error_not_a_silent_drop():
    outbox = Outbox("test-outbox")
    outbox.close()
    outbox.close()  # idempotent
    with pytest.raises(OutboxClosed, match="closed"):
        outbox.post(lambda: None)
