"""Process entry point shared by the services: `python -m services.X [serve|migrate]`."""
from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path

from shared.db import DatabaseUnavailable, create_pool, migrate
from shared.host import serve
from shared.kafka import BrokerUnavailable, start_producer
from shared.settings import ServiceSettings, load_settings


async def check_dependencies(settings: ServiceSettings) -> None:
    """Fail before start-up with one clear line if the database or the broker is unreachable."""
    pool = await create_pool(settings.database_url, max_size=1)
    await pool.close()
    producer = await start_producer(settings.kafka_bootstrap_servers, settings.kafka)
    await producer.stop()


def main(settings_cls: type[ServiceSettings], build: Callable, migrations: Path) -> None:
    command = sys.argv[1] if len(sys.argv) > 1 else "serve"
    settings = load_settings(settings_cls)
    try:
        if command == "migrate":
            applied = asyncio.run(migrate(settings.database_url, migrations))
            print(f"{settings.service_name}: applied {len(applied)} migration(s)")
        elif command == "serve":
            asyncio.run(check_dependencies(settings))
            serve(build(settings), settings)
        else:
            raise SystemExit(f"unknown command {command!r}: use serve or migrate")
    except (DatabaseUnavailable, BrokerUnavailable) as exc:
        raise SystemExit(f"{settings.service_name}: {exc}") from None
