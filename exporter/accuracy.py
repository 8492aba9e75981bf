"""`python -m exporter.accuracy`: accuracy of a checkpoint and its exported graphs on a whole split.

The export gate compares PyTorch and ONNX on a few hundred validation reviews; this scores the
full test split (25,000 reviews) once, for the results table. Every engine sees the same ids,
made by the server's own preprocessing (`server.tokenization`), in length-sorted batches.

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

from server.runner import OnnxRunner
from server.tokenization import TextEncoder, TruncationConfig, pad_batch


def _batches(seqs: list[np.ndarray], batch_size: int):
    order = np.argsort([len(s) for s in seqs], kind="stable")
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        yield idx, [seqs[i] for i in idx]


def torch_probs(checkpoint: Path, seqs: list[np.ndarray], pad_id: int, batch_size: int) -> np.ndarray:
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(checkpoint).float().eval()
    probs = np.empty((len(seqs), 2), dtype=np.float32)
    with torch.inference_mode():
        for idx, batch in _batches(seqs, batch_size):
            ids, mask = pad_batch(batch, pad_id)
            logits = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits
            probs[idx] = torch.softmax(logits.float(), -1).numpy()
    return probs


def onnx_probs(model_dir: Path, seqs: list[np.ndarray], batch_size: int) -> np.ndarray:
    runner = OnnxRunner(model_dir)
    probs = np.empty((len(seqs), 2), dtype=np.float32)
    for idx, batch in _batches(seqs, batch_size):
        probs[idx] = runner.predict(batch)
    return probs


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
    from server.tokenization import read_serving_config

    source = args.model_dir[0] if args.model_dir else args.checkpoint
    if source is None:
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

    if args.model_dir:
        truncation = TruncationConfig.from_dict(read_serving_config(args.model_dir[0])["truncation"])
        encoder = TextEncoder.from_file(args.model_dir[0] / "tokenizer.json", truncation)
    else:
        import yaml

        cfg = yaml.safe_load((args.checkpoint / "training_config.yaml").read_text())
        encoder = TextEncoder.from_file(args.checkpoint / "tokenizer.json", TruncationConfig.from_dict(cfg))
    seqs = encoder.encode_batch(frame["text"].tolist())

    rows: list[dict] = []
    reference: np.ndarray | None = None
    engines = ([("pytorch fp32", lambda: torch_probs(args.checkpoint, seqs, encoder.pad_id, args.batch_size))]
               if args.checkpoint else [])
    engines += [(f"onnx {d}", (lambda d=d: onnx_probs(d, seqs, args.batch_size))) for d in args.model_dir]
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
