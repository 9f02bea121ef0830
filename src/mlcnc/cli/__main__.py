"""``python -m mlcnc`` (and ``python -m mlcnc.cli``): the ``mlcnc`` command."""

import sys

from mlcnc.cli import main

sys.exit(main())
