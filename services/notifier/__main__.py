"""`python -m services.notifier [serve|migrate]`."""
from shared.entry import main

from services.notifier.bootstrap import MIGRATIONS, build
from services.notifier.settings import NotifierSettings

main(NotifierSettings, build, MIGRATIONS)
