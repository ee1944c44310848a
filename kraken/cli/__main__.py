"""``python -m kraken.cli``: the ``kraken`` command."""

import sys

from kraken.cli.main import main

sys.exit(main())
