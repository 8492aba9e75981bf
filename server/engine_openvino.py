"""The native OpenVINO engine: the exporter's static int8 IR (else model.onnx) compiled for the CPU.

One compiled model with a stream per inference worker and one infer request per worker, held
in a pool as the ONNX Runtime engine holds its sessions: a worker borrows a request for its
batch and gives it back. Shapes are dynamic (any batch size, any width up to max_length).
OpenVINO picks the inference precision for the CPU itself (bf16 on a CPU with AMX), so the
exporter's parity check of the IR ran with the same choice on its machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from core.modeldir import ModelDir
from server.engine import EngineError, Pool, first_line, graph_feed

DEVICE = "CPU"
# Read back from the compiled model into the engine's info: what OpenVINO made of our settings.
REPORTED = ("NUM_STREAMS", "INFERENCE_NUM_THREADS", "PERFORMANCE_HINT", "INFERENCE_PRECISION_HINT")


def compile_config(threads: int, streams: int) -> dict[str, Any]:
    """`streams` streams of `threads` threads each: the server's inference workers x threads per batch."""
    return {
        "INFERENCE_NUM_THREADS": threads * streams,
        "NUM_STREAMS": streams,
        "PERFORMANCE_HINT": "LATENCY" if streams == 1 else "THROUGHPUT",
    }


def load_error(path: Path, exc: BaseException) -> str:
    """OpenVINO's messages start with source locations; keep the line that says what failed."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Exception from", "Check '"))]
    reason = next((line for line in useful if "conversion rule" in line), useful[-1] if useful else first_line(exc))
    reason = reason.removeprefix("-- ")
    hint = ""
    if "com.microsoft" in reason:
        hint = "; these are ONNX Runtime's fusions: export with --openvino-int8 for an OpenVINO IR"
    return f"engine openvino: cannot load {path.name} ({reason}{hint})"


def property_text(value: Any) -> str:
    """A compiled model's property as JSON text: element types by name (bf16, f32), enums by value."""
    if hasattr(value, "get_type_name"):
        return str(value.get_type_name())
    return str(getattr(value, "name", value))


class OpenVinoEngine:
    def __init__(self, model: ModelDir, threads: int, workers: int = 1) -> None:
        import openvino as ov

        self.name = "openvino"
        graph = model.openvino_ir or model.graph
        core = ov.Core()
        try:
            network = core.read_model(str(graph))
            dynamic = {i.get_any_name(): ov.PartialShape([-1, -1]) for i in network.inputs}
            if any(i.get_partial_shape().is_static for i in network.inputs):
                network.reshape(dynamic)
            compiled = core.compile_model(network, DEVICE, compile_config(threads, workers))
        except Exception as exc:  # OpenVINO raises RuntimeError with multi-line reports
            raise EngineError(load_error(graph, exc)) from None
        self._compiled = compiled
        self.input_names = {i.get_any_name() for i in compiled.inputs}
        self._requests: Pool[Any] = Pool(compiled.create_infer_request() for _ in range(max(1, workers)))
        serving = model.serving
        self.info: dict[str, Any] = {
            "name": self.name,
            "graph": graph.name,
            "quantization": "int8-static" if model.openvino_ir else serving.get("quantization", "unknown"),
            "device": DEVICE,
            "openvino": ov.get_version(),
            "intra_op_threads": threads,
            "requests": max(1, workers),
            **{key.lower(): property_text(compiled.get_property(key)) for key in REPORTED},
        }

    def run(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with self._requests.borrow() as request:
            request.infer(graph_feed(self.input_names, ids, mask), share_inputs=True)
            # The output tensor is the request's own buffer, reused by its next run: copy it out.
            return np.array(request.get_output_tensor(0).data, dtype=np.float32)
