"""``python -m tmail ...``: the ops command line."""

import sys

from tmail.cli import main

sys.exit(main())
