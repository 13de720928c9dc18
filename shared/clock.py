"""Injectable clocks. Business time always comes from a Clock, never from datetime.now()."""
from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(timezone.utc)


class ManualClock:
    """For tests in one process: time moves only when told."""

    def __init__(self, start: datetime) -> None:
        self._now = start

    def now(self) -> datetime:
        return self._now

    def set(self, when: datetime) -> None:
        self._now = when

    def advance(self, delta: timedelta) -> None:
        self._now += delta


class FileClock:
    """Shares one movable time between processes (tests and the demo): the file holds
    {"offset_seconds": n} added to the system time. A missing file means no offset."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._offset = timedelta(0)

    def _load(self) -> None:
        # Read every time: modification times are too coarse to tell two quick moves apart.
        try:
            data = json.loads(self.path.read_text() or "{}")
        except FileNotFoundError:
            self._offset = timedelta(0)
            return
        except json.JSONDecodeError:  # cannot happen with os.replace, but keep the last value
            return
        self._offset = timedelta(seconds=float(data.get("offset_seconds", 0)))

    def now(self) -> datetime:
        self._load()
        return datetime.now(timezone.utc) + self._offset

    def set(self, when: datetime) -> None:
        offset = (when - datetime.now(timezone.utc)).total_seconds()
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"offset_seconds": offset}))
        os.replace(tmp, self.path)

    def advance(self, delta: timedelta) -> None:
        self.set(self.now() + delta)


def clock_from(path: str | Path | None) -> Clock:
    return FileClock(Path(path)) if path else SystemClock()
