"""`python -m services.console [serve]`."""
import sys

from services.console.bootstrap import build
from services.console.settings import ConsoleSettings
from shared.host import serve
from shared.settings import load_settings

command = sys.argv[1] if len(sys.argv) > 1 else "serve"
if command != "serve":
    raise SystemExit(f"unknown command {command!r}: the console has only serve (it keeps no database)")
settings = load_settings(ConsoleSettings)
serve(build(settings), settings)
