"""`python -m groundup` (and `torchrun -m groundup`) run the same CLI as `groundup`."""

import sys

from groundup.cli import main
from groundup.distributed import record

# record: under torchrun, a rank's uncaught exception reaches torchrun's summary with its rank
sys.exit(record(main)())
