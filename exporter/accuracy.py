"""`python -m exporter.accuracy`: accuracy of a checkpoint and its exported graphs on a whole split.

The export gate compares PyTorch and ONNX on a few hundred validation reviews; this scores the
full test split (25,000 reviews) once, for the results table. Every engine tokenizes with the
server's own preprocessing (`server.tokenization`) and runs length-sorted batches: PyTorch via
`trainer.evaluate.predict`, each ONNX model directory via `server.batch_predict.score_texts`.

    python -m exporter.accuracy --checkpoint artifacts/checkpoint \
        --model-dir artifacts/model --model-dir artifacts/model-fp32 --data-dir data/imdb
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from server.batch_predict import score_texts
from server.runner import OnnxRunner
from server.tokenization import TextEncoder, TruncationConfig


def torch_probs(checkpoint: Path, texts: list[str], batch_size: int) -> np.ndarray:
    """PyTorch fp32 on the CPU, fed the ids the server would make (the checkpoint's truncation)."""
    import torch
    import yaml
    from transformers import AutoModelForSequenceClassification

    from trainer.evaluate import predict

    cfg = yaml.safe_load((checkpoint / "training_config.yaml").read_text())
    encoder = TextEncoder.from_file(checkpoint / "tokenizer.json", TruncationConfig.from_dict(cfg))
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint).float().eval()
    return predict(model, encoder.encode_batch(texts), encoder.pad_id, torch.device("cpu"), batch_size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exporter.accuracy", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="trainer checkpoint scored with PyTorch fp32 on the CPU")
    parser.add_argument("--model-dir", type=Path, action="append", default=[], help="exported model dir (repeatable)")
    parser.add_argument("--data-dir", type=Path, default=Path("data/imdb"), help="directory with <split>.parquet")
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-samples", type=int, default=0, help="0 = the whole split")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--output", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)

    import pandas as pd

    if args.checkpoint is None and not args.model_dir:
        print("error: give --checkpoint and/or --model-dir", file=sys.stderr)
        return 2
    path = args.data_dir / f"{args.split}.parquet"
    if not path.is_file():
        print(f"error: {path}: no such file", file=sys.stderr)
        return 2
    frame = pd.read_parquet(path, columns=["text", "label"])
    if args.max_samples:
        frame = frame.sample(n=min(args.max_samples, len(frame)), random_state=0)
    labels = frame["label"].to_numpy()
    texts = frame["text"].tolist()

    rows: list[dict] = []
    reference: np.ndarray | None = None
    engines = [("pytorch fp32", lambda: torch_probs(args.checkpoint, texts, args.batch_size))] if args.checkpoint else []
    engines += [(f"onnx {d}", (lambda d=d: score_texts(OnnxRunner(d), texts, args.batch_size)))
                for d in args.model_dir]
    for name, score in engines:
        start = time.perf_counter()
        probs = score()
        predicted = probs.argmax(-1)
        row = {"engine": name, "samples": int(len(labels)),
               "accuracy": float((predicted == labels).mean()), "seconds": round(time.perf_counter() - start, 1)}
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
