"""``python -m lnpo.report DIR``."""

import sys

from lnpo.report import main

sys.exit(main())
