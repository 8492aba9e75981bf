"""The training loop on a tiny random BERT: pieces (schedule, batching, accumulation) and
whole runs through the CLI (loss falls, outputs, reload, resume after a crash)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import trainer.loop as train_module
from trainer.__main__ import main as cli_main
from trainer.data import accumulation_groups, plan_batches
from trainer.evaluate import to_device
from trainer.optim import lr_factor, make_scheduler, optimizer_step, param_groups


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, reviews) -> Path:
    """24 train and 8 test reviews as parquet, in the shared data layout."""
    d = tmp_path_factory.mktemp("imdb")
    train = [(f"{text} Review number {i}.", label) for i in range(3) for text, label in reviews]
    for name, rows in (("train", train), ("test", reviews)):
        pd.DataFrame(
            {
                "id": range(len(rows)),
                "rating": [9 if y else 2 for _, y in rows],
                "label": [y for _, y in rows],
                "text": [t for t, _ in rows],
            }
        ).to_parquet(d / f"{name}.parquet")
    return d


def _load_tiny(path: Path):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)


def _encoded_batch(reviews, tiny_checkpoint):
    from core.tokenization import TextEncoder, TruncationConfig

    enc = TextEncoder.from_file(tiny_checkpoint / "tokenizer.json", TruncationConfig(max_length=64))
    seqs = enc.encode_batch([t for t, _ in reviews])
    labels = np.array([y for _, y in reviews])
    return seqs, labels, enc.pad_id


# --------------------------------------------------------------------------- pieces


def test_lr_schedule_warms_up_then_decays_linearly():
    warmup, total = 4, 12
    factors = [lr_factor(s, warmup, total) for s in range(total + 1)]
    assert factors[:5] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert factors[4:] == pytest.approx([1 - i / 8 for i in range(9)])
    assert factors[-1] == 0.0
    # the real scheduler on a real optimizer follows the same shape, stepped per update
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=0.1)
    sched = make_scheduler(opt, warmup, total)
    seen = []
    for _ in range(total):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.1 * f for f in factors[:total]])
    assert max(seen) == pytest.approx(0.1) and seen.index(max(seen)) == warmup


def test_plan_batches_covers_epoch_groups_lengths_and_shards_ranks():
    lengths = np.random.default_rng(0).integers(5, 500, size=103)
    batches = plan_batches(lengths, 8, seed=1, epoch=0, group_by_length=True)
    assert sorted(np.concatenate(batches).tolist()) == list(range(103))
    assert [len(b) for b in batches].count(8) == 12
    # grouped batches are homogeneous in length; a random batch is not
    spread = np.mean([np.ptp(lengths[b]) for b in batches if len(b) == 8])
    random_spread = np.mean([np.ptp(lengths[b]) for b in plan_batches(lengths, 8, 1, 0, False) if len(b) == 8])
    assert spread < random_spread / 3
    # a new epoch reshuffles; the same (seed, epoch) reproduces
    assert not all(np.array_equal(a, b) for a, b in zip(batches, plan_batches(lengths, 8, 1, 1, True)))
    assert all(np.array_equal(a, b) for a, b in zip(batches, plan_batches(lengths, 8, 1, 0, True)))
    # two ranks: same number of equally sized batches, together covering every review
    r0 = plan_batches(lengths, 8, 1, 0, True, world_size=2, rank=0)
    r1 = plan_batches(lengths, 8, 1, 0, True, world_size=2, rank=1)
    assert [len(b) for b in r0] == [len(b) for b in r1]
    assert set(np.concatenate(r0)) | set(np.concatenate(r1)) == set(range(103))
    # accumulation: 13 micro-batches in groups of 4 leave a remainder group of 1
    assert [len(g) for g in accumulation_groups(batches, 4)] == [4, 4, 4, 1]


def test_no_weight_decay_on_biases_and_layernorm(tiny_checkpoint):
    model = _load_tiny(tiny_checkpoint)
    decay, no_decay = param_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.01
    assert "bert.embeddings.LayerNorm.weight" in no_decay_names
    assert all(n.endswith("bias") or "LayerNorm" in n for n in no_decay_names)
    assert "bert.encoder.layer.0.attention.self.query.weight" in {names[id(p)] for p in decay["params"]}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


@pytest.mark.parametrize("split", [[4, 4], [5, 3]])
def test_grad_accumulation_equals_one_big_batch(tiny_checkpoint, reviews, split):
    """2 x 4 (and an uneven 5 + 3, as at an epoch's end) give the update of one batch of 8."""
    seqs, labels, pad_id = _encoded_batch(reviews, tiny_checkpoint)
    cpu = torch.device("cpu")

    def one_update(sizes):
        torch.manual_seed(0)
        model = _load_tiny(tiny_checkpoint).eval()  # eval: no dropout, so both paths see the same net
        # SGD: Adam's first step is ~lr*sign(g), which turns float noise in near-zero
        # gradients into full-size differences; SGD shows the accumulated gradient as is.
        opt = torch.optim.SGD(param_groups(model, 0.01), lr=1.0)
        sched = make_scheduler(opt, 0, 10)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        group, start = [], 0
        for size in sizes:
            idx = np.arange(start, start + size)
            group.append((to_device([seqs[i] for i in idx], pad_id, cpu), torch.from_numpy(labels[idx])))
            start += size
        loss, norm = optimizer_step(model, group, opt, sched, scaler, max_grad_norm=1.0)
        return model, float(loss), float(norm)

    full, loss_full, norm_full = one_update([8])
    accum, loss_accum, norm_accum = one_update(split)
    assert loss_accum == pytest.approx(loss_full, rel=1e-5)
    assert norm_accum == pytest.approx(norm_full, rel=1e-4)
    before = _load_tiny(tiny_checkpoint).state_dict()
    moved = 0
    for (name, a), b in zip(full.state_dict().items(), accum.state_dict().values()):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-5, msg=name)
        moved += int(not torch.equal(a, before[name]))
    assert moved > 10  # the update really changed the weights


def test_classification_metrics_match_sklearn():
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    from trainer.metrics import classification_metrics

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, size=200)
    p_pos = np.clip(labels * 0.35 + rng.random(200) * 0.65, 0, 1)
    m = classification_metrics(labels, np.stack([1 - p_pos, p_pos], axis=1), loss=0.3)
    pred = (p_pos >= 0.5).astype(int)
    prec, rec, f1, support = precision_recall_fscore_support(labels, pred)
    assert m["accuracy"] == pytest.approx(accuracy_score(labels, pred))
    assert m["confusion_matrix"] == confusion_matrix(labels, pred).tolist()
    for k, name in enumerate(("negative", "positive")):
        c = m["per_class"][name]
        assert (c["precision"], c["recall"], c["f1"], c["support"]) == pytest.approx(
            (prec[k], rec[k], f1[k], support[k])
        )
    assert m["f1_macro"] == pytest.approx(f1.mean()) and m["samples"] == 200 and m["loss"] == 0.3
    assert classification_metrics(labels, p_pos) == {**m, "loss": None}  # [n] P(positive) works too


# --------------------------------------------------------------------------- whole runs


def _train_argv(data_dir, base, out, *sets):
    argv = ["train", "--data-dir", str(data_dir), "--base-model", str(base), "--output-dir", str(out)]
    defaults = [
        "max_length=64",
        "batch_size=8",
        "eval_batch_size=16",
        "lr=2e-3",
        "warmup_ratio=0.1",
        "device=cpu",
        "progress_bar=false",
        "log_every_steps=1",
        "val_fraction=0.25",
    ]
    for item in defaults + list(sets):
        argv += ["--set", item]
    return argv


def test_train_cli_loss_falls_and_writes_reloadable_checkpoint(tmp_path, data_dir, tiny_checkpoint, reviews):
    out = tmp_path / "run"
    # a random tiny BERT needs ~30 updates at a high lr before it starts to fit
    code = cli_main(
        _train_argv(
            data_dir,
            tiny_checkpoint,
            out,
            *("epochs=10", "lr=5e-3", "truncation=head+tail", "head_tokens=16", "hidden_dropout=0.0"),
        )
    )
    assert code == 0
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 10
    assert history[-1]["train_loss"] < 0.85 * history[0]["train_loss"], history
    # 18 train reviews / batch 8 = 3 updates per epoch, the last one short
    assert [h["step"] for h in history] == list(range(3, 31, 3))

    metrics = json.loads((out / "metrics.json").read_text())
    for split, n in (("validation", 6), ("test", 8)):
        m = metrics[split]
        assert m["samples"] == n and sum(map(sum, m["confusion_matrix"])) == n
        assert {"accuracy", "precision_macro", "recall_macro", "f1_macro", "loss", "per_class"} <= set(m)
        assert set(m["per_class"]) == {"negative", "positive"}
    assert metrics["device"] == "cpu" and metrics["base_model"] == str(tiny_checkpoint)
    assert metrics["train_samples"] == 10 * 18 and metrics["train_samples_per_s"] > 0
    assert metrics["reload_check"]["ok"] and metrics["reload_check"]["max_abs_prob_diff"] < 1e-4
    best = max(h["val_accuracy"] for h in history)
    assert metrics["validation"]["accuracy"] == pytest.approx(best)

    saved = yaml.safe_load((out / "training_config.yaml").read_text())
    assert saved["max_length"] == 64 and saved["truncation"] == "head+tail" and saved["head_tokens"] == 16
    assert saved["base_model"] == str(tiny_checkpoint)
    for name in (
        "curves.png",
        "confusion_matrix.png",
        "confidence_histogram.png",
        "train.log",
        "tokenizer.json",
        "model.safetensors",
    ):
        assert (out / name).stat().st_size > 0, name
    assert not (out / "state").exists()  # optimizer state is dropped after a finished run

    # reload as any user would, and predict: the trained model now separates the reviews
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert model.config.id2label == {0: "negative", 1: "positive"}
    base = AutoModelForSequenceClassification.from_pretrained(tiny_checkpoint).config
    assert model.config.hidden_dropout_prob == 0.0 != base.hidden_dropout_prob  # the override is trained and saved
    assert model.config.attention_probs_dropout_prob == base.attention_probs_dropout_prob
    tok = AutoTokenizer.from_pretrained(out)
    batch = tok([t for t, _ in reviews], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert logits.shape == (8, 2)
    preds = logits.argmax(-1).tolist()
    assert sum(p == y for p, (_, y) in zip(preds, reviews)) >= 6


def test_resume_after_crash_reproduces_uninterrupted_run(tmp_path, data_dir, tiny_checkpoint, monkeypatch):
    # accumulation 2 over 3 micro-batches: 2 updates per epoch, the second from a lone remainder
    sets = (
        "epochs=2",
        "grad_accum_steps=2",
        "save_state_every_steps=1",
        "keep_state=true",
        "group_by_length=true",
        "resume=true",
    )
    assert cli_main(_train_argv(data_dir, tiny_checkpoint, tmp_path / "a", *sets)) == 0

    real_step, calls = train_module.optimizer_step, {"n": 0}

    def crash_on_fourth(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # the second update of epoch 2
            raise KeyboardInterrupt("simulated crash")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_module, "optimizer_step", crash_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        cli_main(_train_argv(data_dir, tiny_checkpoint, tmp_path / "b", *sets))
    monkeypatch.setattr(train_module, "optimizer_step", real_step)
    assert cli_main(_train_argv(data_dir, tiny_checkpoint, tmp_path / "b", *sets)) == 0
    assert "resumed from" in (tmp_path / "b" / "train.log").read_text()

    a = torch.load(tmp_path / "a" / "state" / "state.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "state" / "state.pt", weights_only=False)
    assert a["progress"]["global_step"] == b["progress"]["global_step"] == 4
    for name, tensor in a["model"].items():
        torch.testing.assert_close(tensor, b["model"][name], msg=name)
    # a changed schedule cannot silently reuse the state
    assert cli_main(_train_argv(data_dir, tiny_checkpoint, tmp_path / "b", *sets, "lr=1e-3")) == 2
