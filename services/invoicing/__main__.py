"""`python -m services.invoicing [migrate]`: run the service (roles from ROLES) or migrate and exit."""
from shared.entry import main

from services.invoicing.bootstrap import MIGRATIONS, build
from services.invoicing.settings import InvoicingSettings

main(InvoicingSettings, build, MIGRATIONS)
