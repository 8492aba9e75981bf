"""The approach most projects ship, as the benchmark's point of comparison.

A PyTorch eager model (the trainer's checkpoint, fp32, `transformers`) behind a plain
stdlib HTTP handler: one request's text(s) through the model at a time, no batching
across requests, no ONNX.

    python -m bench.torch_baseline --checkpoint artifacts/checkpoint --port 8100 [--threads N] [--device cpu]

Same request/response shape as the server's POST /v1/predict and GET /readyz (whose body
also reports the torch version, threads and device). Texts are preprocessed by the same
`TextEncoder` (cleaning, truncation) as the server, so the comparison measures the serving
design, not a tokenization difference. This module imports torch: it is never part of the server.
"""

from __future__ import annotations

import json
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from core import cli
from core.checkpoint import CheckpointError, read_training_config
from core.cli import opt

PROG = "python -m bench.torch_baseline"


@dataclass(frozen=True)
class TorchBaselineConfig:
    """PyTorch eager behind a plain HTTP handler, one request at a time: the benchmark's baseline."""

    checkpoint: Path = field(metadata=opt("trainer checkpoint directory"))
    host: str = field(default="127.0.0.1", metadata=opt("address to listen on"))
    port: int = field(default=8100, metadata=opt("port to listen on"))
    # 0 = torch's default (the machine's physical cores)
    threads: int = field(default=0, metadata=opt("torch intra-op threads (0: torch default)"))
    device: str = field(default="cpu", metadata=opt("cpu or cuda"))


class TorchClassifier:
    """Checkpoint -> probabilities, one text per forward pass (what a naive handler does)."""

    def __init__(self, checkpoint: Path, threads: int = 0, device: str = "cpu") -> None:
        import torch
        from transformers import AutoModelForSequenceClassification

        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.device = torch.device(device)
        self.model = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval().to(self.device)
        record = read_training_config(checkpoint)
        truncation = record.truncation
        self.encoder = record.encoder()
        id2label = self.model.config.id2label
        self.labels = [id2label[i] for i in sorted(id2label)]
        self.uses_token_types = self.model.config.model_type in ("bert", "roberta", "xlm-roberta", "electra")
        self.info = {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": str(self.device),
            "max_length": truncation.max_length,
        }

    def predict(self, text: str) -> dict:
        (ids,) = self.encoder.encode_batch([text])
        input_ids = self.torch.from_numpy(ids).unsqueeze(0).to(self.device)
        feed = {"input_ids": input_ids, "attention_mask": self.torch.ones_like(input_ids)}
        if self.uses_token_types:
            feed["token_type_ids"] = self.torch.zeros_like(input_ids)
        with self.torch.inference_mode():
            probs = self.torch.softmax(self.model(**feed).logits[0].float(), dim=-1).cpu().tolist()
        best = max(range(len(probs)), key=probs.__getitem__)
        return {"label": self.labels[best], "score": probs[best], "probabilities": dict(zip(self.labels, probs))}


def make_handler(model: TorchClassifier) -> type[BaseHTTPRequestHandler]:
    # One model call at a time: the lock serialises inference while connections are read and
    # written by their own threads (a serial server would let one keep-alive client starve the rest).
    lock = threading.Lock()

    def predict(text: str) -> dict:
        with lock:
            return model.predict(text)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as any real client expects

        def do_GET(self) -> None:
            if self.path in ("/readyz", "/healthz"):
                self._send(200, {"status": "ready", **model.info})
            else:
                self._send(404, {"error": {"code": "not_found", "message": f"no route {self.path}"}})

        def do_POST(self) -> None:
            if self.path != "/v1/predict":
                self._send(404, {"error": {"code": "not_found", "message": f"no route {self.path}"}})
                return
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                if isinstance(body.get("texts"), list):
                    self._send(200, {"predictions": [predict(str(t)) for t in body["texts"]]})
                elif isinstance(body.get("text"), str):
                    self._send(200, predict(body["text"]))
                else:
                    self._send(422, {"error": {"code": "invalid_input", "message": "need text or texts"}})
            except (ValueError, AttributeError):
                self._send(400, {"error": {"code": "invalid_json", "message": "body is not a JSON object"}})

        def _send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_args) -> None:  # no per-request stderr line: it would cost CPU too
            pass

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # not 5: waiting clients queue instead of being refused


def main(argv: list[str] | None = None) -> int:
    config = cli.parse_settings(TorchBaselineConfig, argv, prog=PROG)
    if not (config.checkpoint / "config.json").is_file():
        return cli.fail("", f"{config.checkpoint} is not a checkpoint directory (no config.json)")
    try:
        model = TorchClassifier(config.checkpoint, config.threads, config.device)
    except CheckpointError as exc:
        return cli.fail("", str(exc))
    model.predict("warm up the first forward pass")
    server = _Server((config.host, config.port), make_handler(model))
    print(f"torch baseline on http://{config.host}:{config.port} ({model.info})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
