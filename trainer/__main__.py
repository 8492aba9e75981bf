"""`python -m trainer {train,data,baseline,eda} ...`: one parser, one settings dataclass per command.

core.cli builds each subcommand's flags from its settings (TrainArgs, PrepareConfig, BaselineConfig,
EdaConfig); a bad flag or value is one line on stderr (`error: ...`) and exit 2. The training loop
is imported only for `train`, so the other commands do not pay for importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from core import cli
from trainer.baseline import BaselineConfig
from trainer.config import TrainArgs, cli_description, config_keys_help
from trainer.eda import EdaConfig
from trainer.prepare import PrepareConfig

PROG = "python -m trainer"


@dataclass(frozen=True)
class Command:
    settings: type
    module: str  # its `command(settings) -> int` runs the command
    help: str
    epilog: str = ""


COMMANDS = {
    "train": Command(
        TrainArgs, "trainer.loop", "fine-tune a transformer (also under torchrun for DDP)", config_keys_help()
    ),
    "baseline": Command(BaselineConfig, "trainer.baseline", "TF-IDF + logistic regression baseline"),
    "eda": Command(EdaConfig, "trainer.eda", "data report: class balance, lengths, frequent words"),
    "data": Command(PrepareConfig, "trainer.prepare", "put the IMDB dataset in place"),
}


def build_parser() -> cli.OneLineParser:
    parser = cli.OneLineParser(
        prog=PROG,
        description="Train, baseline and inspect the IMDB sentiment model.",
        epilog=f"`{PROG} COMMAND --help` lists a command's options.",
    )
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in COMMANDS.items():
        sub = subcommands.add_parser(
            name,
            help=command.help,
            description=cli_description(command.settings),
            epilog=command.epilog or None,
            formatter_class=argparse.RawDescriptionHelpFormatter,  # the epilog's lines as written
        )
        cli.add_fields(sub, command.settings)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv:
        parser.print_help(sys.stderr)
        return 2
    if not argv[0].startswith("-") and argv[0] not in COMMANDS:
        return cli.fail("", f"unknown command {argv[0]!r} (expected one of {', '.join(COMMANDS)})")
    try:
        namespace = parser.parse_args(argv)
        command = COMMANDS[namespace.command]
        settings: object = cli.from_namespace(parser, command.settings, namespace)
    except SystemExit as exc:  # --help (0), or a bad flag already reported in one line (2)
        return exc.code if isinstance(exc.code, int) else 2
    return int(importlib.import_module(command.module).command(settings))


if __name__ == "__main__":
    sys.exit(main())
