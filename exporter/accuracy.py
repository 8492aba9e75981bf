"""`python -m exporter.accuracy`: accuracy of a checkpoint and its exported graphs on a whole split.

The export gate compares PyTorch and ONNX on a few hundred validation reviews; this scores the
full test split (25,000 reviews) once, for the results table. Every engine is fed the server's
own preprocessing (core.tokenization, with the truncation of the checkpoint or of the model
directory) in length-sorted batches, through exporter/compare.py.

    python -m exporter.accuracy --checkpoint artifacts/checkpoint \
        --model-dir artifacts/model --model-dir artifacts/model-fp32 --data-dir data/imdb
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core import cli
from core.checkpoint import CheckpointError
from core.cli import opt
from core.labels import LABELS
from core.layout import physical_cores
from core.modeldir import ModelDir, ModelDirError, read_model_dir
from exporter.compare import batched_probs, onnx_probs, open_session, torch_probs

PROG = "python -m exporter.accuracy"


@dataclass(frozen=True)
class AccuracyConfig:
    """Accuracy of a checkpoint and its exported graphs on a whole split."""

    checkpoint: Path | None = field(
        default=None, metadata=opt("trainer checkpoint scored with PyTorch fp32 on the CPU")
    )
    model_dir: list[Path] = field(default_factory=list, metadata=opt("exported model dir (repeatable)"))
    data_dir: Path = field(default=Path("data/imdb"), metadata=opt("directory with <split>.parquet"))
    split: str = field(default="test", metadata=opt("split to score"))
    max_samples: int = field(default=0, metadata=opt("0 = the whole split"))
    batch_size: int = field(default=32, metadata=opt("texts per batch"))
    openvino: bool = field(
        default=False,
        metadata=opt("also score each model directory's static int8 OpenVINO IR (--openvino-int8), on OpenVINO"),
    )
    output: Path | None = field(default=None, metadata=opt("write the results as JSON here"))


def checkpoint_probs(
    checkpoint: Path, texts: list[str], batch_size: int, progress: Callable[[int], None] | None = None
) -> tuple[np.ndarray, list[str]]:
    """PyTorch fp32 on the CPU, fed the ids the server would make (the checkpoint's truncation):
    the probabilities and the label names of their columns."""
    from exporter.export import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    model = ckpt.model.float()
    probs = batched_probs(
        {"pytorch": lambda ids, mask: torch_probs(model, ids, mask)}, ckpt.encoder(), texts, batch_size, progress
    )["pytorch"]
    id2label = {int(k): str(v) for k, v in ckpt.hf_config.get("id2label", dict(enumerate(LABELS))).items()}
    return probs, [id2label[i] for i in sorted(id2label)]


def model_dir_probs(
    model: ModelDir, texts: list[str], batch_size: int, progress: Callable[[int], None] | None = None
) -> np.ndarray:
    """A model directory's graph, fed its own serving tokenizer's ids. Raises ModelDirError when
    the graph does not load."""
    try:
        # The server's session settings: its core count (cgroup quota included), no spinning.
        session = open_session(model.graph, str(model.serving.get("target", "cpu")), physical_cores(), spinning=False)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelDirError(f"{model.graph}: cannot load ({str(exc).splitlines()[0]})") from None
    return batched_probs(
        {"onnx": lambda ids, mask: onnx_probs(session, ids, mask)}, model.encoder(), texts, batch_size, progress
    )["onnx"]


def openvino_probs(
    model: ModelDir, texts: list[str], batch_size: int, progress: Callable[[int], None] | None = None
) -> np.ndarray:
    """A model directory's OpenVINO IR, compiled as the server's openvino engine compiles it and
    fed the serving tokenizer's ids: softmax of its logits. Raises ModelDirError without an IR."""
    from core.modeldir import OPENVINO_FILES
    from exporter.compare import open_openvino, openvino_logits

    ir = model.path / OPENVINO_FILES[0]
    if not ir.is_file():
        raise ModelDirError(f"{model.path}: no {OPENVINO_FILES[0]} (export with --openvino-int8)")
    compiled = open_openvino(ir, physical_cores())

    def probs(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        logits = openvino_logits(compiled, ids, mask)
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)

    return batched_probs({"openvino": probs}, model.encoder(), texts, batch_size, progress)["openvino"]


def checkpoint_scorer(checkpoint: Path, texts: list[str], batch_size: int) -> Callable[[], np.ndarray]:
    return lambda: checkpoint_probs(checkpoint, texts, batch_size)[0]


def model_dir_scorer(model_dir: Path, texts: list[str], batch_size: int) -> Callable[[], np.ndarray]:
    return lambda: model_dir_probs(read_model_dir(model_dir), texts, batch_size)


def openvino_scorer(model_dir: Path, texts: list[str], batch_size: int) -> Callable[[], np.ndarray]:
    return lambda: openvino_probs(read_model_dir(model_dir), texts, batch_size)


def main(argv: list[str] | None = None) -> int:
    args = cli.parse_settings(AccuracyConfig, argv, prog=PROG)
    import pandas as pd

    if args.checkpoint is None and not args.model_dir:
        return cli.fail("", "give --checkpoint and/or --model-dir")
    path = args.data_dir / f"{args.split}.parquet"
    if not path.is_file():
        return cli.fail("", f"{path}: no such file")
    frame = pd.read_parquet(path, columns=["text", "label"])
    if args.max_samples:
        frame = frame.sample(n=min(args.max_samples, len(frame)), random_state=0)
    labels = frame["label"].to_numpy()
    texts = frame["text"].tolist()

    rows: list[dict] = []
    reference: np.ndarray | None = None
    engines = [("pytorch fp32", checkpoint_scorer(args.checkpoint, texts, args.batch_size))] if args.checkpoint else []
    engines += [(f"onnx {d}", model_dir_scorer(d, texts, args.batch_size)) for d in args.model_dir]
    if args.openvino:
        engines += [(f"openvino {d}", openvino_scorer(d, texts, args.batch_size)) for d in args.model_dir]
    for name, score in engines:
        start = time.perf_counter()
        try:
            probs = score()
        except (CheckpointError, ModelDirError) as exc:
            return cli.fail("", str(exc))
        predicted = probs.argmax(-1)
        row = {
            "engine": name,
            "samples": len(labels),
            "accuracy": float((predicted == labels).mean()),
            "seconds": round(time.perf_counter() - start, 1),
        }
        if reference is not None:
            row["agreement_with_first"] = float((predicted == reference.argmax(-1)).mean())
        else:
            reference = probs
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.output:
        args.output.write_text(json.dumps({"split": args.split, "data": str(path), "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
