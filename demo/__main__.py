"""`python -m demo` (`make demo`): the whole product in one command, in minutes on a CPU.

The steps are demo/tour.py's; the settings demo/config.py's (`python -m demo --help`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from demo.config import parse_config
from demo.tour import run


def main(argv: Sequence[str] | None = None) -> int:
    return run(parse_config(argv))


if __name__ == "__main__":
    sys.exit(main())
