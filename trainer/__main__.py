"""`python -m trainer {train,baseline,eda,data} ...`: one entry point, one module per command.

Commands are imported lazily so `data` and `eda` do not pay for importing torch.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "train": ("trainer.train", "fine-tune a transformer (also under torchrun for DDP)"),
    "baseline": ("trainer.baseline", "TF-IDF + logistic regression baseline"),
    "eda": ("trainer.eda", "data report: class balance, lengths, frequent words"),
    "data": ("trainer.prepare", "put the IMDB dataset in place"),
}


def usage() -> str:
    lines = ["usage: python -m trainer {" + ",".join(COMMANDS) + "} [options]", ""]
    lines += [f"  {name:<9} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`python -m trainer COMMAND --help` lists a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r} (expected one of {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
