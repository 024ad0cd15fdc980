"""`python -m bigmodel_training`: see `bigmodel_training.cli`."""

import sys

from bigmodel_training.cli import main

if __name__ == "__main__":  # not when a spawned worker process imports this module
    sys.exit(main())
