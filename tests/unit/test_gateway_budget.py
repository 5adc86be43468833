"""The gateway's per-worker memory budget (bodies, downloads, decodes), and what a client sees
when it runs out."""

from __future__ import annotations

import threading
import time

import pytest

from kitchenware.gateway.budget import BudgetExhausted, MemoryBudget


def test_reservations_that_fit_run_together_and_are_returned():
    budget = MemoryBudget(100)
    with budget.reserve(60, timeout=0), budget.reserve(40, timeout=0):
        assert budget.in_use == 100
    assert budget.in_use == 0


def test_a_reservation_waits_for_room_then_proceeds():
    budget = MemoryBudget(100)
    held, order = threading.Event(), []

    def holder():
        with budget.reserve(80, timeout=0):
            held.set()
            time.sleep(0.3)
            order.append("released")

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(5)
    with budget.reserve(50, timeout=5):
        order.append("acquired")
    thread.join()
    assert order == ["released", "acquired"]


def test_a_full_budget_times_out_and_more_than_the_total_is_refused():
    budget = MemoryBudget(100)
    with budget.reserve(80, timeout=0):
        with pytest.raises(BudgetExhausted, match="80 of 100"):
            with budget.reserve(30, timeout=0.1):
                pass
    with pytest.raises(ValueError, match="whole budget"):
        with budget.reserve(101, timeout=1):
            pass
    assert budget.in_use == 0


def test_an_error_inside_the_block_returns_the_reservation():
    budget = MemoryBudget(10)
    with pytest.raises(RuntimeError):
        with budget.reserve(10, timeout=0):
            raise RuntimeError("decode failed")
    assert budget.in_use == 0


def test_a_reservation_grows_and_gives_back_what_it_no_longer_holds():
    """A request reserves its body's worst case, keeps only its images' bytes once parsed,
    and grows by one image per download."""
    budget = MemoryBudget(100)
    with budget.reserve(70, timeout=0) as request:
        request.give_back(50)  # parsed: 20 bytes of images stay
        assert budget.in_use == 20 and request.nbytes == 20
        request.grow(80, timeout=0)  # a download may bring the largest image
        with pytest.raises(BudgetExhausted):
            request.grow(1, timeout=0.05)
        request.give_back(1000)  # more than it holds: gives back what it has
        assert request.nbytes == 0 and budget.in_use == 0
        request.grow(30, timeout=0)
    assert budget.in_use == 0
