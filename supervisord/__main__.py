"""`python -m supervisord` runs the qbsupervisor command line."""

import sys

from supervisord.cli.main import main

sys.exit(main())
