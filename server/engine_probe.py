"""`python -m server.engine_probe [server flags]`: `--engine auto`'s measurement in a process of its own.

With `--processes N` every child would otherwise time the engines itself, at the same moment as
its siblings, and noise could make them choose differently: N servers on one port answering
from different engines. So the supervisor runs this once, with a child's flags (its share of
the cores), and starts every child on the engine it printed. The supervisor itself loads no
runtime: the engines are built, timed and dropped here, and only the choice comes back, as one
JSON line on stdout (server.engine_choice.EngineChoice). A failure is one line on stderr, exit 2.
"""

from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import sys
from collections.abc import Sequence

import orjson

from core.modeldir import ModelDirError
from server.config import parse_config
from server.engine import EngineError
from server.model import resolve_engine


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(list(sys.argv[1:] if argv is None else argv))
    try:
        choice = resolve_engine(config)
    except (ModelDirError, EngineError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(orjson.dumps(choice.to_dict()).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
