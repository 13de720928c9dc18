"""Process entry point shared by the services: `python -m services.X [serve|migrate]`."""
from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path

from shared.db import DatabaseUnavailable, migrate
from shared.host import serve
from shared.kafka import BrokerUnavailable
from shared.settings import ServiceSettings, load_settings


def main(settings_cls: type[ServiceSettings], build: Callable, migrations: Path) -> None:
    command = sys.argv[1] if len(sys.argv) > 1 else "serve"
    settings = load_settings(settings_cls)
    try:
        if command == "migrate":
            applied = asyncio.run(migrate(settings.database_url, migrations))
            print(f"{settings.service_name}: applied {len(applied)} migration(s)")
        elif command == "serve":
            serve(build(settings), settings)
        else:
            raise SystemExit(f"unknown command {command!r}: use serve or migrate")
    except (DatabaseUnavailable, BrokerUnavailable) as exc:
        raise SystemExit(f"{settings.service_name}: {exc}") from None
