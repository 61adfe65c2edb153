"""``python -m provisioning.cli``: the same as ``gerbang-provision`` (tests and the rehearsal run it
so, with the interpreter under test)."""

import sys

from provisioning.cli import main

sys.exit(main())
