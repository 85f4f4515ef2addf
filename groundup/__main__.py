"""`python -m groundup` (and `torchrun -m groundup`) run the same CLI as `groundup`."""

import sys

from groundup.cli import main

sys.exit(main())
