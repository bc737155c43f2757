"""`python -m fer_tune.cli ...`: the same as the `fer-tune` console script."""

import sys

from fer_tune.cli.scripts import main

sys.exit(main())
