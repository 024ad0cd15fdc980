"""`python -m bigmodel_training`: see `bigmodel_training.cli`."""

import sys

from bigmodel_training.cli import main

sys.exit(main())
