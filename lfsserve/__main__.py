"""`python -m lfsserve` is the `lfsserve` command."""

import sys

from .cli import main

sys.exit(main())
