"""`python -m cbda.train ...` is `cbda ...` (train, eval, report, configs)."""
import sys

from .cli import main

sys.exit(main())
