"""``python -m gerbang.rehearsal``: the exam-day rehearsal (options in :mod:`.cli`)."""

import sys

from gerbang.rehearsal.cli import main

if __name__ == "__main__":
    sys.exit(main())
