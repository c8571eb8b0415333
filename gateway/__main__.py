"""``python -m gateway`` runs the ``strata`` command line."""

import sys

from gateway.cli import main

sys.exit(main())
