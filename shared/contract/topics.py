"""One topic per producing service, plus billing-source ingest and the dead-letter topic."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topics:
    prefix: str = ""

    @property
    def invoicing(self) -> str:
        return f"{self.prefix}ar.invoicing.v1"

    @property
    def dunning(self) -> str:
        return f"{self.prefix}ar.dunning.v1"

    @property
    def risk(self) -> str:
        return f"{self.prefix}ar.risk.v1"

    @property
    def notifier(self) -> str:
        return f"{self.prefix}ar.notifier.v1"

    @property
    def ingest(self) -> str:
        return f"{self.prefix}ar.ingest.v1"

    @property
    def dead_letter(self) -> str:
        return f"{self.prefix}ar.deadletter.v1"

    def all(self) -> list[str]:
        return [self.invoicing, self.dunning, self.risk, self.notifier, self.ingest, self.dead_letter]
