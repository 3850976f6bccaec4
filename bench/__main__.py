"""``python -m lgld.export.bench``: the same as ``lgld-bench``."""

import sys

from lgld.export.bench.cli import main

sys.exit(main())
