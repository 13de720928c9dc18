"""`python -m services.risk [serve|migrate|stream]`."""
import sys

from shared.entry import main

from services.risk.bootstrap import MIGRATIONS, build, run_stream
from services.risk.settings import RiskSettings
from shared.settings import load_settings

if len(sys.argv) > 1 and sys.argv[1] == "stream":
    run_stream(load_settings(RiskSettings))
else:
    main(RiskSettings, build, MIGRATIONS)
