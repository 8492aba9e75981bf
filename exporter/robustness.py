"""`python -m exporter.robustness`: the served model's accuracy on slices of the test set.

The slices (exporter/slices.py): short and long reviews, dense negation, a late contrast that
turns the review's lean, HTML-heavy and capitalised reviews; two perturbations of a seeded part
of the sample (typos, upper case); and the hand-written contrast set committed beside this module
(contrast_set.csv: sarcasm, irony, double negation, mixed verdicts). The model directory's graph
is scored as the server feeds it (its tokenizer and truncation, exporter/compare.py), and a
checkpoint, when given, with PyTorch fp32. Writes robustness.md and robustness.json into the
model directory; GET /v1/model shows the summary (core.modeldir.robustness_summary).

    python -m exporter.robustness --model-dir artifacts/model [--checkpoint artifacts/checkpoint] \
        --data-dir data/imdb [--samples 2000]
"""

from __future__ import annotations

import csv
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core import cli
from core.checkpoint import CheckpointError
from core.cli import opt
from core.labels import LABELS
from core.modeldir import ROBUSTNESS_FILE, ROBUSTNESS_MARKDOWN, ModelDir, ModelDirError, read_model_dir
from core.tokenization import TextEncoder, clean_text
from exporter import slices
from exporter.accuracy import checkpoint_probs, model_dir_probs
from exporter.robustness_report import ENGINE_TITLES, FLAG_POINTS, flag_lines, markdown, pct, row

PROG = "python -m exporter.robustness"
CONTRAST_SET = Path(__file__).with_name("contrast_set.csv")
CONTRAST_KINDS = {
    "sarcasm": "praise meant as scorn, or a mock complaint meant as praise",
    "irony": "the opposite of what is said, or of what was expected",
    "double_negation": 'negations that cancel or compound ("not a bad film", "never once was I not bored")',
    "mixed": "both sides weighed, one verdict",
}
PROGRESS_EVERY_S = 10.0


@dataclass(frozen=True)
class RobustnessConfig:
    """Accuracy of the served model (and of its checkpoint) on slices of the test set."""

    model_dir: Path = field(metadata=opt("exported model directory; robustness.md and .json are written into it"))
    checkpoint: Path | None = field(default=None, metadata=opt("also score this trainer checkpoint (PyTorch fp32)"))
    data_dir: Path = field(default=Path("data/imdb"), metadata=opt("directory with <split>.parquet (text, label)"))
    split: str = field(default="test", metadata=opt("split to slice"))
    samples: int = field(default=0, metadata=opt("score a seeded sample of this many reviews (0 = all)"))
    perturbed: int = field(default=1000, metadata=opt("reviews of the sample given typos and upper-cased"))
    typo_rate: float = field(default=slices.TYPO_RATE, metadata=opt("share of words of 3+ letters given a typo"))
    seed: int = field(default=0, metadata=opt("seed of the sample and of the typos"))
    batch_size: int = field(default=32, metadata=opt("texts per batch"))
    contrast_set: Path = field(default=CONTRAST_SET, metadata=opt("the hand-written contrast set (text,label,kind)"))

    def __post_init__(self) -> None:
        if self.samples < 0 or self.perturbed < 0:
            raise ValueError("--samples and --perturbed must be >= 0")
        if not 0 < self.typo_rate <= 1:
            raise ValueError(f"--typo-rate must be in (0, 1], got {self.typo_rate}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")


class InputError(Exception):
    """A data file that cannot be used; the message is one line naming it."""


def read_test(path: Path) -> pd.DataFrame:
    """The split's `text` and `label` (0 = negative, 1 = positive, as core.labels orders them)."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow's errors have no common base worth naming
        raise InputError(f"{path}: unreadable parquet ({str(exc).splitlines()[0]})") from None
    missing = [c for c in ("text", "label") if c not in frame.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing}; found {list(frame.columns)}")
    if not len(frame):
        raise InputError(f"{path}: no rows")
    if not frame["label"].isin([0, 1]).all():
        raise InputError(f"{path}: labels must be 0 (negative) or 1 (positive)")
    return frame[["text", "label"]].assign(text=frame["text"].astype(str), label=frame["label"].astype(int))


def read_contrast_set(path: Path = CONTRAST_SET) -> pd.DataFrame:
    """The hand-written contrast set: columns text, label (negative/positive), kind."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    frame = pd.DataFrame(rows, columns=["text", "label", "kind"])
    if not len(frame) or frame.isna().any().any() or (frame["text"].str.strip() == "").any():
        raise InputError(f"{path}: needs rows with a text, a label and a kind")
    bad = sorted(set(frame["label"]) - set(LABELS))
    if bad:
        raise InputError(f"{path}: labels must be one of {list(LABELS)}, got {bad}")
    return frame


class Progress:
    """A line on stderr every PROGRESS_EVERY_S seconds and at the end: long runs show they move."""

    def __init__(self, engine: str, total: int) -> None:
        self.engine, self.total = engine, total
        self.start = self.last = time.perf_counter()

    def __call__(self, done: int) -> None:
        now = time.perf_counter()
        if done < self.total and now - self.last < PROGRESS_EVERY_S:
            return
        self.last = now
        print(
            f"robustness: {self.engine}: {done:,}/{self.total:,} texts ({done / self.total:.0%}), "
            f"{now - self.start:.0f} s",
            file=sys.stderr,
            flush=True,
        )


def onnx_predictions(model: ModelDir, texts: list[str], batch_size: int) -> np.ndarray:
    """The served graph's labels (names), on its own serving tokenizer's ids."""
    probs = model_dir_probs(model, texts, batch_size, Progress("onnx", len(texts)))
    return np.asarray(model.labels)[probs.argmax(-1)]


def torch_predictions(checkpoint: Path, texts: list[str], batch_size: int) -> np.ndarray:
    """The checkpoint's labels with PyTorch fp32 on the CPU, on the ids the server would make."""
    probs, labels = checkpoint_probs(checkpoint, texts, batch_size, Progress("pytorch", len(texts)))
    return np.asarray(labels)[probs.argmax(-1)]


def truncation_facts(model: ModelDir, texts: list[str]) -> dict[str, Any]:
    """How much of these reviews truncation cuts: their word pieces whole against what is kept."""
    whole = model.encoder(truncate=False).encode_batch(texts)
    pieces = np.array([len(ids) - 2 for ids in whole])  # [CLS] and [SEP] are no part of the review
    kept = np.minimum(pieces, model.truncation.max_length - 2)
    total = int(pieces.sum())
    return {
        "word_pieces_mean": round(float(pieces.mean()), 1) if len(pieces) else None,
        "kept_mean": round(float(kept.mean()), 1) if len(kept) else None,
        "cut_share": round(1 - float(kept.sum()) / total, 4) if total else None,
    }


def truncation_text(model: ModelDir) -> str:
    t = model.truncation
    kept = f"first {t.head_tokens} + last {t.max_length - 2 - t.head_tokens}" if t.strategy == "head+tail" else "first"
    return f"{t.strategy} ({kept} of at most {t.max_length - 2} word pieces)"


def same_ids(encoder: TextEncoder, before: list[str], after: list[str]) -> float:
    """The share of texts whose ids a rewrite left unchanged."""
    a, b = encoder.encode_batch(before), encoder.encode_batch(after)
    return float(np.mean([np.array_equal(x, y) for x, y in zip(a, b)])) if before else 0.0


def build_report(args: RobustnessConfig, model: ModelDir, log: Callable[[str], None]) -> dict[str, Any]:
    started = time.perf_counter()
    full = read_test(args.data_dir / f"{args.split}.parquet")
    contrast = read_contrast_set(args.contrast_set)
    sample = full.sample(n=min(args.samples, len(full)), random_state=args.seed) if args.samples else full
    sample = sample.reset_index(drop=True)
    sample = sample.assign(clean=sample["text"].map(clean_text))
    masks = slices.select(sample)
    part = sample.sample(n=min(args.perturbed, len(sample)), random_state=args.seed)
    perturbed = {
        "typos": [slices.typos(t, args.typo_rate, args.seed) for t in part["text"]],
        "upper_cased": [slices.upper(t) for t in part["text"]],
    }
    texts = sample["text"].tolist() + perturbed["typos"] + perturbed["upper_cased"] + contrast["text"].tolist()
    log(f"robustness: {len(sample):,} test reviews, 2 x {len(part):,} perturbed, {len(contrast)} contrast set")

    predicted = {"onnx": onnx_predictions(model, texts, args.batch_size)}
    if args.checkpoint is not None:
        predicted["pytorch"] = torch_predictions(args.checkpoint, texts, args.batch_size)
    truth = np.concatenate(
        [
            np.asarray(LABELS)[sample["label"].to_numpy()],
            np.asarray(LABELS)[part["label"].to_numpy()],
            np.asarray(LABELS)[part["label"].to_numpy()],
            contrast["label"].to_numpy(),
        ]
    )
    hits = {engine: labels == truth for engine, labels in predicted.items()}
    n, m = len(sample), len(part)
    spans = {"sample": (0, n), "typos": (n, n + m), "upper_cased": (n + m, n + 2 * m), "contrast": (n + 2 * m, None)}

    def of(span: str, mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
        lo, hi = spans[span]
        return {e: h[lo:hi] if mask is None else h[lo:hi][mask] for e, h in hits.items()}

    cut = np.asarray(model.encoder().encode_batch(sample["text"].tolist()).truncated)
    whole_rows = of("sample")
    whole = {e: float(h.mean()) for e, h in whole_rows.items()}
    report_whole = row("all test reviews", "whole", "every review of the sample", whole_rows, {})
    report_whole["truncated_share"] = round(float(cut.mean()), 4)

    out = []
    for s in slices.NATURAL:
        mask = masks[s.name].to_numpy()
        extra: dict[str, Any] = {"truncated_share": round(float(cut[mask].mean()), 4) if mask.any() else None}
        if s.name == "long":
            facts = truncation_facts(model, sample["text"][mask].tolist())
            extra["truncation"] = facts
            if facts["cut_share"] is not None:
                extra["note"] = (
                    f"Truncation, {truncation_text(model)}, keeps {facts['kept_mean']:,.0f} of their "
                    f"{facts['word_pieces_mean']:,.0f} word pieces on average: "
                    f"it cuts {facts['cut_share']:.0%} of them."
                )
        out.append(row(s.name, "slice", s.definition, of("sample", mask), whole, **extra))

    titles = {e: ENGINE_TITLES[e] for e in predicted}
    titles["onnx"] = f"{model.serving.get('quantization', 'served')} ONNX"
    # The same reviews unperturbed: what the perturbation alone costs.
    part_rows = {e: h[part.index.to_numpy()] for e, h in whole_rows.items()}
    unperturbed = {e: float(h.mean()) for e, h in part_rows.items()} if m else {}
    for name, definition in (
        (
            "typos",
            f"{args.typo_rate:.0%} of the words of 3+ letters with one typo (swap, drop or insert; seed {args.seed})",
        ),
        ("upper_cased", "the review in capitals"),
    ):
        if not m:
            out.append(row(name, "perturbation", definition, of(name), whole, note="None perturbed (--perturbed 0)."))
            continue
        note = "The same reviews unperturbed: " + ", ".join(f"{titles[e]} {pct(a)}" for e, a in unperturbed.items())
        if name == "upper_cased":
            share = same_ids(model.encoder(), part["text"].tolist(), perturbed[name])
            lower = "the tokenizer lower-cases, so only a text's batch-mates (dynamic int8 scales, padding) move it"
            note += f". Upper-casing left the ids of {share:.0%} of them unchanged" + (
                f": {lower}" if share == 1 else ""
            )
        out.append(row(name, "perturbation", definition, of(name), unperturbed, note=note + "."))

    kinds = contrast["kind"].to_numpy()
    out.append(row("contrast set", "contrast set", f"the {len(contrast)} hand-written reviews", of("contrast"), whole))
    order = list(CONTRAST_KINDS)
    for kind in sorted(set(kinds), key=lambda k: (order.index(k) if k in order else len(order), k)):
        definition = CONTRAST_KINDS.get(kind, kind.replace("_", " "))
        out.append(row(f"contrast: {kind}", "contrast set", definition, of("contrast", kinds == kind), whole))

    return {
        "model_dir": str(model.path),
        "model": {
            "name": model.serving.get("model_name", model.path.name),
            "version": str(model.serving.get("model_version", "unknown")),
            "quantization": model.serving.get("quantization", "unknown"),
        },
        "checkpoint": None if args.checkpoint is None else str(args.checkpoint),
        "data": str(args.data_dir / f"{args.split}.parquet"),
        "test_reviews": len(full),
        "samples": n,
        "perturbed": m,
        "contrast_rows": len(contrast),
        "seed": args.seed,
        "typo_rate": args.typo_rate,
        "truncation": {**model.truncation.to_dict(), "text": truncation_text(model)},
        "flag_points": FLAG_POINTS,
        "engines": titles,
        "whole": report_whole,
        "slices": out,
        "flags": flag_lines(out, titles),
        "seconds": round(time.perf_counter() - started, 1),
    }


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    args = cli.parse_settings(RobustnessConfig, argv, prog=PROG)
    try:
        model = read_model_dir(args.model_dir)
        report = build_report(args, model, lambda line: print(line, file=sys.stderr, flush=True))
        write_atomic(model.path / ROBUSTNESS_FILE, json.dumps(report, indent=2) + "\n")
        text = markdown(report)
        write_atomic(model.path / ROBUSTNESS_MARKDOWN, text)
    except (InputError, ModelDirError, CheckpointError) as exc:
        return cli.fail("", str(exc))
    except OSError as exc:
        return cli.fail("", f"{exc.filename or args.model_dir}: cannot write ({exc.strerror})")
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
