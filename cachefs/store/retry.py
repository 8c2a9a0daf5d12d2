"""Retry with backoff: the one policy every retry loop in cachefs follows.

A policy says how many attempts a request gets, how long to wait between them (doubling from
``base`` up to ``cap``, less a random part so that parts failing together do not come back in
lockstep) and which errors are worth another attempt. The numbers, and why, are in
docs/CONCURRENCY.md.

``retry`` runs an async attempt and sleeps with ``trio.sleep``, so a test drives it on a
``MockClock``. Background work that schedules its next attempt instead of sleeping (write-back)
asks ``delay`` and adds it to ``trio.current_time()``; blocking code in a worker thread (the
store's own lean requests) asks ``delay`` and ``gives_up`` and sleeps in its thread.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from ..errors import StoreUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

_random = random.Random()


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    #: attempts in all, the first included; None: never give up (background work)
    attempts: int | None = 5
    #: seconds before the second attempt; each further wait doubles
    base: float = 0.2
    #: no wait is longer than this
    cap: float = 5.0
    #: up to this fraction of each wait is taken off at random
    jitter: float = 0.25
    #: the errors another attempt may cure; any other error is raised at once
    retryable: tuple[type[BaseException], ...] = (StoreUnavailable,)

    def delay(self, failures: int, rng: random.Random = _random) -> float:
        """Seconds to wait after the ``failures``-th failed attempt (1 for the first)."""
        full = min(self.cap, self.base * 2 ** max(0, failures - 1))
        return full * (1.0 - self.jitter * rng.random())

    def gives_up(self, failures: int) -> bool:
        """True once ``failures`` failed attempts used up every attempt."""
        return self.attempts is not None and failures >= self.attempts

    def can_retry(self, error: BaseException) -> bool:
        return isinstance(error, self.retryable)


#: A request a caller waits for (a GET of a part, a table of contents, an origin's answer):
#: five attempts, 0.2 s doubling to at most 5 s, about 3 s of waiting in all, within the
#: default --timeout of 30 s. botocore makes its own 3 attempts under each.
REQUEST = RetryPolicy()
#: The store's lean requests (outside botocore): callers retry again on top, so few and short.
LEAN = RetryPolicy(attempts=3, base=0.1, cap=0.4)
#: Background work nobody waits for (write-back, manifests): retried until it succeeds, from
#: 0.5 s up to once a minute, so an outage costs a request a minute per change, not a storm.
BACKGROUND = RetryPolicy(attempts=None, base=0.5, cap=60.0)


async def retry(policy: RetryPolicy, what: str, attempt: Callable[[], Awaitable[T]], *,
                on_retry: Callable[[BaseException], None] = lambda e: None) -> T:
    """Run ``attempt`` until it succeeds, fails with an error the policy does not retry, or
    runs out of attempts (the last error is raised)."""
    failures = 0
    while True:
        try:
            return await attempt()
        except policy.retryable as e:
            failures += 1
            if policy.gives_up(failures):
                raise
            delay = policy.delay(failures)
            log.info("%s: %s; retrying in %.1fs", what, e, delay)
            on_retry(e)
            await trio.sleep(delay)
