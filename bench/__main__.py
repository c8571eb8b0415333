"""``python -m bench``: the benchmark command line (see :mod:`bench.cli`).

The guard matters: worker processes start through multiprocessing, which imports the parent's
``__main__`` module again, which must not run the command line a second time.
"""

import sys

from bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
