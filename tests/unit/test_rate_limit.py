"""The per-key token bucket behind 429 (#8)."""
from __future__ import annotations

from shared.auth import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_is_allowed_then_the_average_rate_and_the_wait_is_said():
    clock = Clock()
    limiter = RateLimiter(per_minute=60, burst=3, clock=clock)
    assert [limiter.take("k1") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("k1") == 1.0  # one a second: the next one in a second
    assert limiter.take("k2") == 0.0  # another key has its own bucket
    clock.now = 0.5
    assert limiter.take("k1") == 0.5
    clock.now = 1.0
    assert limiter.take("k1") == 0.0
    clock.now = 100.0  # a quiet hour refills to the burst, no more
    assert [limiter.take("k1") for _ in range(4)][-1] > 0
