"""TrainConfig: YAML + --set overrides, typed parsing, and one-line CLI errors (exit 2)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from trainer.__main__ import main as cli_main
from trainer.config import ConfigError, TrainConfig, build_config, resolve_base_model

REPO = Path(__file__).resolve().parents[2]


def test_defaults_yaml_set_and_flags_precedence(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("lr: 5e-5\nbatch_size: 8\ndata_dir: from-yaml\nmax_steps: 10\n")
    cfg = build_config(
        cfg_file,
        ["batch_size=4", "max_steps=none", "group_by_length=false", "truncation=head+tail", "head_tokens=32"],
        data_dir="from-flag",
        output_dir=None,
    )
    # YAML 1.1 reads "5e-5" as a string: it must still become a float
    assert cfg.lr == pytest.approx(5e-5) and isinstance(cfg.lr, float)
    assert cfg.batch_size == 4 and isinstance(cfg.batch_size, int)
    assert cfg.max_steps is None
    assert cfg.group_by_length is False
    assert cfg.truncation_config().strategy == "head+tail" and cfg.head_tokens == 32
    assert cfg.data_dir == "from-flag"
    assert cfg.output_dir == TrainConfig().output_dir


@pytest.mark.parametrize(
    "item, fragment",
    [
        ("learning_rate=1e-4", "unknown key 'learning_rate'"),
        ("epochs=1.5", "epochs: expected int"),
        ("epochs=0", "epochs: must be >= 1"),
        ("lr=fast", "lr: expected float"),
        ("group_by_length=maybe", "group_by_length: expected bool"),
        ("truncation=tail", "truncation must be one of"),
        ("device=tpu", "device: must be one of"),
        ("attention=flash", "attention: must be one of"),
        ("hidden_dropout=1.0", "hidden_dropout: must be in [0, 1) or none"),
        ("attention_dropout=-0.1", "attention_dropout: must be in [0, 1) or none"),
        ("max_length=300", None),  # valid: no error
        ("no-equals-sign", "expected key=value"),
    ],
)
def test_set_values_are_typed_and_checked(item, fragment):
    if fragment is None:
        assert build_config(None, [item]).max_length == 300
        return
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        build_config(None, [item])


def test_yaml_unknown_key_and_bad_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: 1e-4\nbatchsize: 8\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown key 'batchsize'"):
        build_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        build_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        build_config(tmp_path / "list.yaml")


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["train", "--set", "bogus=1"], "unknown key 'bogus'"),
        (["train", "--set", "batch_size=big"], "batch_size: expected int"),
        (["train", "--no-such-flag"], "unrecognized arguments"),
        (["train", "--config", "/nonexistent/x.yaml"], "config file not found"),
        (["train", "--base-model", "./no/such/model"], "path not found"),
        (["train", "--data-dir", "/nonexistent/imdb", "--set", "device=cpu"], "data directory not found"),
        (["nonsense"], "unknown command"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(argv, fragment, capsys, tmp_path):
    argv = argv + ["--output-dir", str(tmp_path / "out")] if argv[0] == "train" else argv
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


def test_cpu_rejects_fp16_and_missing_cuda(tmp_path, capsys):
    import torch

    from trainer.runtime import resolve_device, resolve_precision

    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        resolve_precision("fp16", torch.device("cpu"))
    assert resolve_precision("bf16", torch.device("cpu")) == ("bf16", torch.bfloat16)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="cuda requested"):
            resolve_device("cuda")


def test_shipped_configs_load_and_alias_resolves():
    for name in ("minilm", "distilbert"):
        cfg = build_config(REPO / "configs" / f"{name}.yaml")
        assert cfg.max_length >= 256
        raw = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())
        assert set(raw) <= set(cfg.to_dict())
    minilm = build_config(REPO / "configs" / "minilm.yaml")
    assert minilm.base_model == "packaged-minilm"
    assert (Path(resolve_base_model(minilm.base_model)) / "tokenizer.json").is_file()
    distil = build_config(REPO / "configs" / "distilbert.yaml")
    assert distil.base_model == "distilbert-base-uncased" and distil.lr == pytest.approx(3e-5)
    assert distil.batch_size == 16
    # a hub id is passed through untouched (downloaded by transformers, never in tests)
    assert resolve_base_model("distilbert-base-uncased") == "distilbert-base-uncased"


def test_auto_precision_on_a_cpu_is_bf16_only_with_amx():
    import torch

    from trainer.runtime import cpu_has_fast_bf16, resolve_precision

    amx = "processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
    no_amx = "processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_vnni avx512_bf16\n"
    assert cpu_has_fast_bf16(amx) == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert not cpu_has_fast_bf16(no_amx) and not cpu_has_fast_bf16("")
    expected = "bf16" if cpu_has_fast_bf16() else "fp32"
    assert resolve_precision("auto", torch.device("cpu")) == (
        expected,
        {"bf16": torch.bfloat16, "fp32": None}[expected],
    )
    assert resolve_precision("fp32", torch.device("cpu")) == ("fp32", None)


def test_model_overrides_pick_the_attention_kernel_and_dropout():
    import torch

    from trainer.model import model_overrides

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert model_overrides(TrainConfig(), cpu) == {"attn_implementation": "eager"}  # the base model's dropout
    assert model_overrides(TrainConfig(), cuda) == {"attn_implementation": "sdpa"}
    cfg = build_config(None, ["hidden_dropout=0", "attention_dropout=0.05", "attention=sdpa"])
    assert model_overrides(cfg, cpu) == {
        "attn_implementation": "sdpa",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.05,
    }
    assert build_config(None, ["hidden_dropout=none"]).hidden_dropout is None
