"""``python -m lgld.bench``: the same as ``lgld-bench``."""

import sys

from lgld.bench.cli import main

sys.exit(main())
