"""The one retry policy: its waits, its limit, which errors it retries, on the trio clock
(pytest-trio's ``autojump_clock``: a MockClock with autojump_threshold=0, no real sleeps)."""

from __future__ import annotations

import dataclasses
import random

import pytest
import trio
import trio.testing

from cachefs.errors import ChecksumMismatch, NotFound, StoreUnavailable
from cachefs.store.retry import BACKGROUND, REQUEST, RetryPolicy, retry

EXACT = RetryPolicy(attempts=4, base=0.2, cap=0.5, jitter=0.0)


def test_waits_double_up_to_the_cap() -> None:
    assert [EXACT.delay(n) for n in range(1, 5)] == pytest.approx([0.2, 0.4, 0.5, 0.5])
    assert BACKGROUND.attempts is None and not BACKGROUND.gives_up(10**6)
    assert BACKGROUND.delay(30, random.Random(1)) <= BACKGROUND.cap


def test_jitter_only_shortens_a_wait_and_by_at_most_its_fraction() -> None:
    rng = random.Random(7)
    waits = [REQUEST.delay(3, rng) for _ in range(200)]
    assert all(0.8 * (1 - REQUEST.jitter) - 1e-9 <= w <= 0.8 for w in waits)
    assert len(set(waits)) > 100  # parts failing together do not come back together


async def test_retries_until_success_sleeping_on_the_trio_clock(
        autojump_clock: trio.testing.MockClock) -> None:
    calls: list[float] = []
    retried: list[BaseException] = []

    async def attempt() -> str:
        calls.append(trio.current_time())
        if len(calls) < 3:
            raise StoreUnavailable("503")
        return "ok"

    start = trio.current_time()
    assert await retry(EXACT, "GET k", attempt, on_retry=retried.append) == "ok"
    assert [round(t - start, 6) for t in calls] == [0.0, 0.2, 0.6]
    assert len(retried) == 2


async def test_gives_up_after_its_attempts_with_the_last_error(
        autojump_clock: trio.testing.MockClock) -> None:
    calls = 0

    async def attempt() -> None:
        nonlocal calls
        calls += 1
        raise StoreUnavailable(f"503 #{calls}")

    start = trio.current_time()
    with pytest.raises(StoreUnavailable, match="#4"):
        await retry(EXACT, "GET k", attempt)
    assert calls == 4
    assert trio.current_time() - start == pytest.approx(0.2 + 0.4 + 0.5)


async def test_an_error_no_retry_can_cure_is_raised_at_once(
        autojump_clock: trio.testing.MockClock) -> None:
    calls = 0

    async def attempt() -> None:
        nonlocal calls
        calls += 1
        raise NotFound("k")

    with pytest.raises(NotFound):
        await retry(REQUEST, "GET k", attempt)
    assert calls == 1


async def test_a_policy_names_the_errors_it_retries(
        autojump_clock: trio.testing.MockClock) -> None:
    damaged = dataclasses.replace(EXACT, retryable=(StoreUnavailable, ChecksumMismatch))
    errors: list[Exception] = [ChecksumMismatch("bad trailer"), StoreUnavailable("503")]

    async def attempt() -> str:
        if errors:
            raise errors.pop(0)
        return "toc"

    assert await retry(damaged, "toc", attempt) == "toc"
    with pytest.raises(ChecksumMismatch):
        await retry(EXACT, "toc", lambda: _raise(ChecksumMismatch("bad")))


async def _raise(error: Exception) -> None:
    raise error
