"""The README quotes the code's real defaults.

Its three defaults tables (server settings, export defaults, the training recipe) are parsed
and every row compared with the code it describes, so a default changed in the code and not in
the README (or the reverse) fails here. Each table must also cover the facts users tune first.
"""

from __future__ import annotations

import re
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from exporter.config import ExportConfig
from server.config import ServerConfig
from server.inference import CPU_BATCH_TOKENS, GPU_BATCH_TOKENS
from server.runner import GPU_SHAPE_BUCKET
from trainer.config import build_config

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
MINILM_YAML = REPO / "configs" / "minilm.yaml"


def table_after(marker: str) -> dict[str, list[str]]:
    """The first markdown table after the line holding `marker`: {first cell: the other cells}."""
    lines = README.splitlines()
    start = next((i for i, line in enumerate(lines) if marker in line), None)
    assert start is not None, f"README has no {marker!r}"
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows:
            break
    body = rows[2:]  # after the header and the separator
    assert body, f"no table after {marker!r}"
    return {row[0]: row[1:] for row in body}


def first_code(cell: str) -> str | None:
    found = re.search(r"`([^`]+)`", cell)
    return found.group(1) if found else None


def stated_value(cell: str, default: object) -> object:
    """The value a README cell states, parsed to the type of the code's `default`: a bool is
    written `on`/`off`, None `none`, every other value is the cell's first `code` span (`2 MiB` allowed)."""
    if default is None:  # an optional setting, off unless given
        assert cell.split()[0] == "none", f"a default of None is written none, got {cell!r}"
        return None
    if isinstance(default, bool):
        word = cell.split()[0]
        assert word in ("on", "off"), f"a boolean default is written on/off, got {cell!r}"
        return word == "on"
    text = first_code(cell)
    assert text is not None, f"the default must be written as `code`: {cell!r}"
    if isinstance(default, int):
        number, _, unit = text.partition(" ")
        return int(number) * {"": 1, "KiB": 1024, "MiB": 1024**2}[unit]
    if isinstance(default, float):
        return float(text)
    if isinstance(default, Path):
        return Path(text)
    return text


def flag_field(cell: str) -> str:
    found = re.search(r"`--([a-z0-9-]+)", cell)
    assert found, f"no --flag in {cell!r}"
    return found.group(1).replace("-", "_")


def field_defaults(cls: type) -> dict[str, object]:
    """Each field's default; an empty list (a repeatable flag given no value) reads as none."""
    out: dict[str, object] = {f.name: f.default for f in fields(cls) if f.default is not MISSING}
    for f in fields(cls):
        if f.default_factory is not MISSING:
            out[f.name] = f.default_factory() or None
    return out


SERVER = table_after("**Server settings**")
EXPORT = table_after("**Export defaults**")
RECIPE = table_after("**Training recipe**")


def test_the_server_table_lists_every_setting_once():
    stated = [flag_field(flag) for flag in SERVER]
    assert sorted(stated) == sorted(f.name for f in fields(ServerConfig))


@pytest.mark.parametrize("flag", list(SERVER))
def test_each_server_row_states_the_code_default(flag):
    name = flag_field(flag)
    default = field_defaults(ServerConfig)[name]
    assert stated_value(SERVER[flag][0], default) == default, f"README {flag}: {SERVER[flag][0]!r}"


def test_the_device_dependent_server_defaults_quote_the_code():
    """Where 0 means "by device", the README says what each device gets."""
    cells = {flag_field(flag): cells[0] for flag, cells in SERVER.items()}
    assert "cost curve" in cells["max_batch_tokens"]
    assert f"{CPU_BATCH_TOKENS} on CPU where none" in cells["max_batch_tokens"]
    assert f"{GPU_BATCH_TOKENS} on a GPU" in cells["max_batch_tokens"]
    assert f"{GPU_SHAPE_BUCKET} on a GPU" in cells["shape_bucket"]
    assert "1 on a GPU" in cells["inference_workers"]


def test_the_server_facts_users_tune_first_are_in_the_table():
    stated = {flag_field(flag) for flag in SERVER}
    for name in ("max_batch_size", "max_wait_ms", "max_batch_tokens", "latency_budget_ms", "request_timeout_ms"):
        assert name in stated


@pytest.mark.parametrize("flag", list(EXPORT))
def test_each_export_row_states_the_code_default(flag):
    name = flag_field(flag)
    default = field_defaults(ExportConfig)[name]
    assert stated_value(EXPORT[flag][0], default) == default, f"README {flag}: {EXPORT[flag][0]!r}"


def test_the_export_table_covers_quantization_and_the_gate():
    stated = {flag_field(flag) for flag in EXPORT}
    for name in ("target", "quantize", "optimize", "per_channel", "eval_samples", "max_accuracy_drop", "min_agreement"):
        assert name in stated
    quantize = next(cells[0] for flag, cells in EXPORT.items() if flag_field(flag) == "quantize")
    for target in ("cpu", "gpu"):
        config = ExportConfig(checkpoint=Path("ckpt"), output_dir=Path("out"), target=target)
        assert f"{config.resolved_quantization} for {target}" in quantize


def test_each_recipe_row_states_configs_minilm_yaml():
    """The recipe is what `--config configs/minilm.yaml` resolves to: the YAML over the defaults."""
    recipe = build_config(MINILM_YAML).to_dict()
    for key, cells in RECIPE.items():
        name = first_code(key)
        assert name in recipe, f"README recipe row {key!r} is not a TrainConfig key"
        assert stated_value(cells[0], recipe[name]) == recipe[name], f"README {name}: {cells[0]!r}"


def test_the_recipe_covers_length_truncation_and_optimisation():
    stated = {first_code(key) for key in RECIPE}
    for name in ("base_model", "max_length", "truncation", "head_tokens", "batch_size", "lr", "epochs"):
        assert name in stated
    # The tail the README derives ("first 64 + last 190"): max_length less [CLS], [SEP] and the head.
    config = build_config(MINILM_YAML)
    tail = config.max_length - 2 - config.head_tokens
    head_row = next(cells[0] for key, cells in RECIPE.items() if first_code(key) == "head_tokens")
    assert f"first {config.head_tokens} + last {tail}" in head_row
