"""`python -m idsedit` = the `idsedit` command."""

import sys

from .cli import main

sys.exit(main())
