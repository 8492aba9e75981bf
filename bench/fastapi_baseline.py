"""The design most projects ship, as a benchmark configuration: FastAPI + uvicorn, one worker
process per core, no batching, the same ONNX model and the same preprocessing.

    SENTIMENT_BASELINE_MODEL_DIR=artifacts/model python -m uvicorn bench.fastapi_baseline:create_app \\
        --factory --host 127.0.0.1 --port 8100 --workers 2

Each uvicorn worker loads its own session (one ONNX Runtime thread) and answers each request
with one run: a synchronous endpoint, which FastAPI runs in its thread pool. Same contract as the
server for what the benchmark sends (POST /v1/predict {"text": ...}, GET /readyz), so the lab
drives both the same way.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from core.modeldir import read_model_dir
from server.encoder import ModelEncoder
from server.runner import OnnxRunner

MODEL_DIR_ENV = "SENTIMENT_BASELINE_MODEL_DIR"


class Review(BaseModel):
    text: str


def create_app() -> FastAPI:
    """uvicorn's factory: one model per worker process, from $SENTIMENT_BASELINE_MODEL_DIR."""
    model = read_model_dir(os.environ[MODEL_DIR_ENV])
    encoder = ModelEncoder(model)
    runner = OnnxRunner(model, intra_op_threads=1, specials=encoder.specials)
    runner.warmup()
    labels = runner.labels
    app = FastAPI()

    @app.get("/readyz")
    def readyz() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/v1/predict")
    def predict(review: Review) -> dict[str, Any]:
        probs = runner.predict(encoder.encode([review.text]))[0]
        best = int(probs.argmax())
        return {
            "label": labels[best],
            "score": float(probs[best]),
            "probabilities": {label: float(p) for label, p in zip(labels, probs)},
        }

    return app
