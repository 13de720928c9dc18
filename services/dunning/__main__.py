"""`python -m services.dunning [serve|migrate]`."""
from shared.entry import main

from services.dunning.bootstrap import MIGRATIONS, build
from services.dunning.settings import DunningSettings

main(DunningSettings, build, MIGRATIONS)
