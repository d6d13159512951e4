"""BoundedFrequencyRunner and Backoff, driven by a FakeClock: nothing sleeps."""

from __future__ import annotations

import threading

import pytest

from lbcore.clock import FakeClock
from lbcore.runner import Backoff, BoundedFrequencyRunner


class Recorder:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.times: list[float] = []

    def __call__(self) -> None:
        self.times.append(self.clock.now())


def make(min_interval=1.0, max_interval=10.0, start=100.0):
    clock = FakeClock(start=start)
    rec = Recorder(clock)
    return clock, rec, BoundedFrequencyRunner("test", rec, min_interval, max_interval, clock)


def test_first_request_runs_immediately():
    _clock, rec, r = make()
    r.run()
    r.step()
    assert rec.times == [100.0]


def test_nothing_runs_before_anything_is_due():
    _clock, rec, r = make()
    assert r.step() == 110.0  # the periodic run, max_interval after creation
    assert rec.times == []


def test_requests_coalesce():
    _clock, rec, r = make()
    for _ in range(5):
        r.run()
    r.step()
    r.step()
    assert rec.times == [100.0]


def test_min_interval_delays_the_next_run():
    clock, rec, r = make(min_interval=2.0)
    r.run()
    r.step()
    clock.advance(0.5)
    r.run()
    r.run()
    assert r.step() == 102.0  # due, but not yet
    assert rec.times == [100.0]
    clock.set(102.0)
    r.step()
    assert rec.times == [100.0, 102.0]


def test_request_after_min_interval_runs_at_once():
    clock, rec, r = make(min_interval=2.0)
    r.run()
    r.step()
    clock.advance(5)
    r.run()
    r.step()
    assert rec.times == [100.0, 105.0]


def test_max_interval_forces_periodic_runs():
    clock, rec, r = make(max_interval=10.0)
    r.run()
    r.step()
    assert r.next_run() == 110.0
    clock.set(110.0)
    r.step()
    clock.set(120.0)
    r.step()
    assert rec.times == [100.0, 110.0, 120.0]


def test_a_run_resets_the_periodic_timer():
    clock, _rec, r = make(max_interval=10.0)
    r.run()
    r.step()
    clock.set(107.0)
    r.run()
    r.step()
    assert r.next_run() == 117.0


def test_zero_max_interval_disables_periodic_runs():
    _clock, _rec, r = make(max_interval=0)
    r.run()
    r.step()
    assert r.next_run() == float("inf")


def test_retry_after_schedules_a_run():
    clock, rec, r = make(min_interval=1.0, max_interval=60.0)
    r.run()
    r.step()
    r.retry_after(5.0)
    assert r.next_run() == 105.0
    clock.set(105.0)
    r.step()
    assert rec.times == [100.0, 105.0]
    assert r.next_run() == 165.0  # retry consumed


def test_retry_respects_min_interval():
    _clock, _rec, r = make(min_interval=3.0)
    r.run()
    r.step()
    r.retry_after(0.5)
    assert r.next_run() == 103.0


def test_sooner_request_wins_over_later_retry():
    clock, rec, r = make(min_interval=1.0, max_interval=60.0)
    r.run()
    r.step()
    r.retry_after(30.0)
    clock.advance(2)
    r.run()
    r.step()
    assert rec.times == [100.0, 102.0]
    assert r.next_run() == 162.0  # the run satisfied the retry


def test_earlier_retry_wins():
    _clock, _rec, r = make(max_interval=60.0)
    r.run()
    r.step()
    r.retry_after(10.0)
    r.retry_after(4.0)
    r.retry_after(20.0)
    assert r.next_run() == 104.0


def test_fn_may_schedule_its_own_retry_and_errors_do_not_stop_the_runner():
    clock = FakeClock(start=0.0)
    calls = []

    def fn():
        calls.append(clock.now())
        if len(calls) == 1:
            r.retry_after(2.0)
            raise RuntimeError("boom")

    r = BoundedFrequencyRunner("test", fn, 0.0, 60.0, clock)
    r.run()
    assert r.step() == 2.0
    clock.set(2.0)
    r.step()
    assert calls == [0.0, 2.0]


def test_loop_runs_until_stopped_without_sleeping():
    clock = FakeClock(start=0.0)
    stop = threading.Event()
    times = []

    def fn():
        times.append(clock.now())
        if len(times) == 3:
            stop.set()

    r = BoundedFrequencyRunner("test", fn, 1.0, 10.0, clock, poll_interval=1.0)
    r.run()
    r.loop(stop)  # the FakeClock jumps to each deadline
    assert times == [0.0, 10.0, 20.0]


def test_interval_validation():
    clock = FakeClock()
    with pytest.raises(ValueError):
        BoundedFrequencyRunner("t", lambda: None, 5.0, 1.0, clock)
    with pytest.raises(ValueError):
        BoundedFrequencyRunner("t", lambda: None, -1.0, 1.0, clock)


def test_backoff_doubles_and_caps():
    b = Backoff(initial=1.0, maximum=10.0)
    assert [b.next() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    b.reset()
    assert b.next() == 1.0


def test_backoff_validation():
    with pytest.raises(ValueError):
        Backoff(initial=0)
    with pytest.raises(ValueError):
        Backoff(initial=5, maximum=1)
