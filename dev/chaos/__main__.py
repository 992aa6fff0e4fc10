"""`python -m dev.chaos`: the reliability suite (see `dev.chaos.run`)."""

import sys

from dev.chaos.run import main

sys.exit(main())
