"""The batch machinery of shared/processing.py and the consumer's batch sizing, without I/O."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

import asyncpg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.db import is_transient
from shared.kafka import BatchSizer
from shared.processing import _Failures, backoff, waves


@dataclass(frozen=True)
class Item:
    n: int
    key: str
    kind: str


def items(spec: str) -> list[Item]:
    """'aX aX bY aY' -> items with key a/b and kind X/Y, numbered in order."""
    return [Item(n, word[0], word[1]) for n, word in enumerate(spec.split())]


def shape(ws: list[list[Item]]) -> list[str]:
    return [" ".join(f"{i.key}{i.kind}" for i in w) for w in ws]


def test_a_keys_runs_of_one_kind_share_a_wave_and_its_next_run_waits_for_the_next_wave():
    ws = waves(items("aX aX bY aY bY cX aX"), key=lambda i: i.key, kind=lambda i: i.kind)
    assert shape(ws) == ["aX aX bY bY cX", "aY", "aX"]


def test_no_waves_for_nothing():
    assert waves([], key=lambda i: i, kind=lambda i: i) == []


@given(st.lists(st.tuples(st.sampled_from("abcd"), st.sampled_from("XYZ")), max_size=60))
def test_waves_keep_every_keys_order_and_each_wave_holds_one_run_per_key(pairs):
    source = [Item(n, k, t) for n, (k, t) in enumerate(pairs)]
    ws = waves(source, key=lambda i: i.key, kind=lambda i: i.kind)
    flat = [i for w in ws for i in w]
    assert sorted(i.n for i in flat) == list(range(len(source)))
    for key in "abcd":
        assert [i.n for i in flat if i.key == key] == [i.n for i in source if i.key == key]
    for w in ws:
        assert [i.n for i in w] == sorted(i.n for i in w)
        for key in "abcd":
            assert len({i.kind for i in w if i.key == key}) <= 1  # one kind (one run) of a key per wave


def test_the_batch_size_grows_while_batches_fill_quickly_and_halves_when_one_is_slow():
    sizer = BatchSizer(size=100, minimum=10, maximum=800, target_seconds=0.5)
    sizer.observe(100, 0.1)
    assert sizer.size == 200
    sizer.observe(50, 0.1)  # not full: traffic is light, nothing to gain
    assert sizer.size == 200
    for _ in range(5):
        sizer.observe(sizer.size, 0.2)
    assert sizer.size == 800
    sizer.observe(800, 1.5)
    assert sizer.size == 400
    for _ in range(10):
        sizer.observe(1, 5.0)
    assert sizer.size == 10


def test_backoff_doubles_up_to_its_cap():
    assert [backoff(n, first=0.5, cap=5) for n in range(1, 7)] == [0.5, 1, 2, 4, 5, 5]


@pytest.mark.parametrize("exc", [
    asyncpg.AdminShutdownError(""), asyncpg.CannotConnectNowError(""), asyncpg.CrashShutdownError(""),
    asyncpg.DeadlockDetectedError(""), asyncpg.SerializationError(""), asyncpg.TooManyConnectionsError(""),
    asyncpg.ConnectionDoesNotExistError(""), asyncpg.ReadOnlySQLTransactionError(""),
    asyncpg.InterfaceError("connection is closed"), ConnectionResetError(), asyncio.TimeoutError(),
])
def test_failover_restart_and_lost_races_are_transient(exc):
    assert is_transient(exc)


@pytest.mark.parametrize("exc", [
    asyncpg.UniqueViolationError(""), asyncpg.CharacterNotInRepertoireError(""), asyncpg.DataError(""),
    ValueError("bad"), KeyError("x"), OverflowError("date value out of range"),
])
def test_errors_about_the_record_are_not_transient(exc):
    assert not is_transient(exc)


class Recorder:
    """An `apply` that fails for chosen items and records what it was given and what stuck."""

    def __init__(self, poison: set[int] = frozenset(), transient_failures: int = 0) -> None:
        self.poison, self.transient_failures = poison, transient_failures
        self.calls: list[list[int]] = []
        self.applied: list[int] = []
        self.dead: list[tuple[int, str]] = []

    async def apply(self, batch: list[int]) -> None:
        self.calls.append(list(batch))
        if self.transient_failures:
            self.transient_failures -= 1
            raise asyncpg.AdminShutdownError("terminating connection due to administrator command")
        if self.poison & set(batch):
            raise ValueError(f"bad item {min(self.poison & set(batch))}")
        self.applied += batch  # the transaction committed

    async def dead_letter(self, item: int, reason: str) -> None:
        self.dead.append((item, reason))


def failures(r: Recorder, max_attempts: int = 3, sleep=None) -> _Failures:
    return _Failures(service="s", name="c", dead_letter=r.dead_letter, record_of=lambda i: i, max_attempts=max_attempts,
                     sleep=sleep or _no_sleep)


async def test_a_poison_item_is_found_by_halving_retried_and_dead_lettered_while_the_rest_apply_in_order():
    r = Recorder(poison={5})
    await failures(r).run(list(range(10)), r.apply)
    assert r.applied == [0, 1, 2, 3, 4, 6, 7, 8, 9]
    assert r.dead == [(5, "handler failed after 3 attempts: ValueError('bad item 5')")]
    assert r.calls.count([5]) == 3


async def test_a_transient_failure_retries_the_same_batch_and_never_dead_letters():
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    r = Recorder(transient_failures=6)
    await failures(r, sleep=sleep).run(list(range(4)), r.apply)
    assert r.calls == [[0, 1, 2, 3]] * 7 and r.applied == [0, 1, 2, 3] and r.dead == []
    assert waits == [0.2, 0.4, 0.8, 1.6, 3.2, 6.4]


async def test_the_dead_lettered_item_is_remembered():
    r, remembered = Recorder(poison={0}), []

    async def remember(item: int) -> None:
        remembered.append(item)

    await failures(r, max_attempts=1).run([0, 1], r.apply, remember)
    assert remembered == [0] and r.applied == [1]


async def _no_sleep(_seconds: float) -> None:
    return None


async def test_a_batch_that_runs_past_the_statement_timeout_is_applied_in_halves_and_nothing_is_dead_lettered():
    applied, dead, sizes = [], [], []

    async def apply(batch):
        sizes.append(len(batch))
        if len(batch) > 3:  # too much work for one statement within the timeout
            raise asyncpg.QueryCanceledError("canceling statement due to statement timeout")
        applied.extend(batch)

    async def dead_letter(record, reason):
        dead.append(reason)

    async def no_sleep(_):
        pass

    failures = _Failures(service="s", name="c", dead_letter=dead_letter, record_of=lambda r: r, max_attempts=3,
                         sleep=no_sleep)
    await failures.run(list(range(10)), apply)
    assert applied == list(range(10)) and dead == []
    assert sizes[0] == 10 and max(sizes[1:]) <= 5


async def test_one_tenants_bulk_work_never_keeps_another_tenant_waiting_for_more_than_one_unit():
    from shared.fairness import TenantGate

    gate, order, release = TenantGate(3), [], asyncio.Event()

    async def work(tenant: str, n: int) -> None:
        async with gate.slot(tenant):
            order.append((tenant, n))
            await release.wait()

    busy = [asyncio.create_task(work("big", n)) for n in range(20)]  # ten bulk requests' chunks
    await asyncio.sleep(0)
    small = asyncio.create_task(work("small", 0))
    await asyncio.sleep(0)
    # "big" holds two of the three slots; the third is the other tenant's at once.
    assert order == [("big", 0), ("big", 1), ("small", 0)]
    release.set()
    await asyncio.gather(*busy, small)
    assert len(order) == 21 and gate._tenants == {}
