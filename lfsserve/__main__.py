"""`python -m lfsserve` is the `lfsserve` command."""

import sys

from .entry import main

sys.exit(main())
