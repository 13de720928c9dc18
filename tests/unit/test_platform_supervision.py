"""The platform's supervisor, on stand-in processes (Python sleepers, no broker or database):
the backoff schedule, restarting a process that exits on its own, leaving alone one stopped on
purpose, and giving up when the embedded broker dies."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import typer

from tahsilat import cli
from tahsilat.embedded import Broker
from tahsilat.platform import RESTART_STABLE_AFTER, Platform, PlatformOptions, restart_delay
from tests.support import wait_for

SLEEPER = ["-c", "import os, time; print('started', os.getpid(), flush=True); time.sleep(600)"]


def test_restart_delay_doubles_from_one_second_up_to_thirty():
    assert [restart_delay(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 30, 30, 30]
    assert restart_delay(1000) == 30
    assert restart_delay(3, base=0.5, cap=10) == 2
    with pytest.raises(ValueError):
        restart_delay(0)


@pytest.fixture
def platform(tmp_path):
    warnings: list[str] = []
    p = Platform(PlatformOptions(base_dir=tmp_path), warning=warnings.append)
    p.log_dir.mkdir(parents=True)
    p.warnings = warnings
    yield p
    p.stop()


def kill(p: Platform, name: str) -> int:
    """kill -9 the process, as a user might; returns when it is gone."""
    proc = next(x.proc for x in p.processes if x.name == name)
    proc.kill()
    proc.wait(10)
    return proc.pid


def pid(p: Platform, name: str) -> int:
    return next(x.proc.pid for x in p.processes if x.name == name)


async def until(predicate, message: str, timeout: float = 10.0):
    async def check():
        return predicate()

    return await wait_for(check, timeout, 0.05, message)


def started_at(p: Platform, name: str) -> float:
    return next(x.started_at for x in p.processes if x.name == name)


async def test_a_process_that_exits_on_its_own_is_restarted_with_backoff(platform):
    p = platform
    p._spawn("dunning", SLEEPER, {})
    p._spawn("notifier", SLEEPER, {})
    first = kill(p, "dunning")
    log = p.log_dir / "dunning.log"
    with open(log, "a") as f:
        f.write("before the crash\n")
    now = started_at(p, "dunning") + 5
    p.supervise(now)
    assert p.exited() == {"dunning": -9}
    assert p.warnings[0].startswith("dunning exited with code -9; restarting in 1 s (restart 1)")
    p.supervise(now + 0.9)
    assert pid(p, "dunning") == first and p.restarts == {"dunning": 0, "notifier": 0}

    p.supervise(now + 1)
    assert pid(p, "dunning") != first and p.restarts == {"dunning": 1, "notifier": 0}
    assert p.warnings[1] == f"dunning restarted (pid {pid(p, 'dunning')})"
    assert p.exited() == {}
    # The new run goes on appending to the same log.
    await until(lambda: f"started {pid(p, 'dunning')}" in log.read_text(), "the second run's line in the log")
    assert log.read_text().index("before the crash") < log.read_text().index(f"started {pid(p, 'dunning')}")

    # Crashing again soon after the restart doubles the delay.
    kill(p, "dunning")
    p.supervise(now + 2)
    assert p.warnings[2].startswith("dunning exited with code -9; restarting in 2 s (restart 2)")
    p.supervise(now + 3.9)
    assert p.restarts["dunning"] == 1
    p.supervise(now + 4)
    assert p.restarts["dunning"] == 2

    # After a minute up, a crash starts again from one second.
    kill(p, "dunning")
    later = now + 4 + RESTART_STABLE_AFTER + 0.5  # past the minute: (a + 4 + 60) - (a + 4) can be 59.99999
    p.supervise(later)
    assert p.warnings[-1].startswith("dunning exited with code -9; restarting in 1 s (restart 3)")
    p.supervise(later + 1)
    assert p.restarts == {"dunning": 3, "notifier": 0}


def test_a_process_stopped_on_purpose_stays_down_until_restarted(platform):
    p = platform
    p._spawn("dunning", SLEEPER, {})
    first = pid(p, "dunning")
    p.stop_process("dunning")
    p.supervise(started_at(p, "dunning") + 1000)
    assert p.exited() == {} and p.restarts == {"dunning": 0} and p.warnings == []
    assert next(x.proc for x in p.processes).poll() is not None

    p.restart("dunning")  # deliberate: not counted, and supervised again afterwards
    assert pid(p, "dunning") != first and p.restarts == {"dunning": 0}
    kill(p, "dunning")
    p.supervise(started_at(p, "dunning") + 1)
    assert p.warnings[-1].startswith("dunning exited with code -9; restarting in 1 s (restart 1)")


def test_supervision_can_be_turned_off(tmp_path):
    warnings: list[str] = []
    p = Platform(PlatformOptions(base_dir=tmp_path, supervise=False), warning=warnings.append)
    p.log_dir.mkdir(parents=True)
    try:
        p._spawn("dunning", SLEEPER, {})
        first = kill(p, "dunning")
        p.supervise(started_at(p, "dunning") + 1000)
        assert pid(p, "dunning") == first and p.restarts == {"dunning": 0} and warnings == []
        assert p.exited() == {"dunning": -9}
    finally:
        p.stop()


def test_a_dead_broker_stops_supervision_and_says_the_platform_cannot_continue(platform):
    p = platform
    p.broker = Broker(port=1)
    p.broker.proc = subprocess.Popen([sys.executable, *SLEEPER], stdout=subprocess.DEVNULL)
    p._spawn("dunning", SLEEPER, {})
    p.broker.proc.kill()
    p.broker.proc.wait(10)
    kill(p, "dunning")
    p.supervise(started_at(p, "dunning") + 1)
    assert p.fatal and p.fatal.startswith("the Kafka broker exited with code -9; the platform cannot continue")
    assert "restart tahsilat up" in p.fatal
    assert p.warnings == [p.fatal]
    p.supervise(started_at(p, "dunning") + 1000)
    assert p.restarts == {"dunning": 0} and p.warnings == [p.fatal]


async def test_the_supervisor_thread_restarts_and_stop_ends_it(platform):
    p = platform
    p._spawn("dunning", SLEEPER, {})
    p._start_supervisor()
    first = kill(p, "dunning")
    await until(lambda: p.restarts["dunning"] == 1, "the supervisor's restart")
    second = pid(p, "dunning")
    assert second != first and p.warnings[-1] == f"dunning restarted (pid {second})"
    thread = p._supervisor
    p.stop()
    assert not thread.is_alive()
    with pytest.raises(ProcessLookupError):
        os.kill(second, 0)
    assert p.restarts == {"dunning": 1}


def test_up_exits_non_zero_when_the_platform_cannot_continue():
    class Dead:
        fatal = "the Kafka broker exited with code -9; the platform cannot continue: restart tahsilat up"

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(typer.Exit) as exit_:
        cli._run_until_stopped(Dead())
    assert exit_.value.exit_code == 1
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers
