"""Registry of (type, version) -> payload model, with upcasters from old versions to the newest."""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from shared.contract.events import EventPayload

P = TypeVar("P", bound="type[EventPayload]")


class UnknownEventType(LookupError):
    pass


class EventRegistry:
    def __init__(self) -> None:
        self._models: dict[tuple[str, int], type[EventPayload]] = {}
        self._upcasters: dict[tuple[str, int], Callable[[dict[str, Any]], dict[str, Any]]] = {}
        self._latest: dict[str, int] = {}  # looked up for every record consumed

    def register(self, event_type: str, version: int) -> Callable[[P], P]:
        def decorate(cls: P) -> P:
            key = (event_type, version)
            if key in self._models:
                raise ValueError(f"{event_type} v{version} registered twice")
            cls.event_type = event_type
            cls.event_version = version
            self._models[key] = cls
            self._latest[event_type] = max(version, self._latest.get(event_type, 0))
            return cls

        return decorate

    def upcaster(self, event_type: str, from_version: int):
        """Register a function turning v`from_version` data into v`from_version + 1` data."""

        def decorate(fn: Callable[[dict[str, Any]], dict[str, Any]]):
            self._upcasters[(event_type, from_version)] = fn
            return fn

        return decorate

    def model(self, event_type: str, version: int) -> type[EventPayload]:
        try:
            return self._models[(event_type, version)]
        except KeyError:
            raise UnknownEventType(f"no model for {event_type} v{version}") from None

    def latest_version(self, event_type: str) -> int:
        try:
            return self._latest[event_type]
        except KeyError:
            raise UnknownEventType(f"unknown event type {event_type!r}") from None

    def items(self) -> list[tuple[tuple[str, int], type[EventPayload]]]:
        return sorted(self._models.items())

    def parse(self, event_type: str, version: int, data: dict[str, Any]) -> EventPayload:
        latest = self.latest_version(event_type)
        if version > latest:
            raise UnknownEventType(f"{event_type} v{version} is newer than this service knows (v{latest})")
        while version < latest:
            data = self._upcasters[(event_type, version)](data)
            version += 1
        return self.model(event_type, version).model_validate(data)


REGISTRY = EventRegistry()


def parse_payload(event_type: str, version: int, data: dict[str, Any]) -> EventPayload:
    return REGISTRY.parse(event_type, version, data)
