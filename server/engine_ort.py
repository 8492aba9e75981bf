"""The ONNX Runtime engine: model.onnx in one or more sessions (CPU, CUDA or OpenVINO provider)."""

from __future__ import annotations

from typing import Any

import numpy as np

from core.modeldir import ModelDir, ModelDirError
from server.engine import OPENVINO_PROVIDER, Pool, graph_feed

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "openvino": [OPENVINO_PROVIDER, "CPUExecutionProvider"],
}


class OrtEngine:
    """`sessions` sessions of model.onnx; a run borrows one (a single session is shared,
    unlocked: `run` is thread-safe). Each session has its own intra-op pool of `threads`."""

    def __init__(
        self, model: ModelDir, threads: int, inter_op_threads: int = 1, sessions: int = 1, provider: str = "cpu"
    ) -> None:
        import onnxruntime as ort

        self.name = "ort-openvino" if provider == "openvino" else "ort"
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = inter_op_threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle ORT threads otherwise spin for a while after each run, stealing the cores the
        # event loop and the tokenizer thread need between batches.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        provider_options: list[dict[str, str]] = [{} for _ in PROVIDERS[provider]]
        if provider == "openvino":  # the provider sizes its own pool: one stream of `threads` per session
            provider_options[0] = {"device_type": "CPU", "num_of_threads": str(threads), "num_streams": "1"}
        try:
            all_sessions = [
                ort.InferenceSession(
                    str(model.graph), options, providers=PROVIDERS[provider], provider_options=provider_options
                )
                for _ in range(max(1, sessions))
            ]
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelDirError(f"{model.graph}: cannot load ({str(exc).splitlines()[0]})") from None
        self.session = all_sessions[0]
        # With several sessions, each run borrows one; a single session is shared, unlocked.
        self._sessions: Pool[Any] | None = Pool(all_sessions) if len(all_sessions) > 1 else None
        self.input_names = {i.name for i in self.session.get_inputs()}
        self._output = self.session.get_outputs()[0].name
        self.info: dict[str, Any] = {
            "name": self.name,
            "graph": model.graph.name,
            "providers": self.session.get_providers(),
            "intra_op_threads": threads,
            "inter_op_threads": inter_op_threads,
            "sessions": len(all_sessions),
        }

    def run(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        feed = graph_feed(self.input_names, ids, mask)
        if self._sessions is None:
            (logits,) = self.session.run([self._output], feed)
        else:
            with self._sessions.borrow() as session:
                (logits,) = session.run([self._output], feed)
        return np.asarray(logits, dtype=np.float32)
