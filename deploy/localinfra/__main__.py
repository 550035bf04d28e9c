"""Entry point for ``python3 -m deploy.localinfra``."""

import sys

from .cli import main

sys.exit(main())
