"""The served model: an encoder (texts -> ids) and a runner (ids -> probabilities), loaded
together from one model directory with the machine's core layout applied."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from core.layout import cuda_wanted, thread_layout, uses_cuda
from core.modeldir import ModelDir, read_model_dir
from server.config import ServerConfig
from server.encoder import Encoder, ModelEncoder
from server.engine import AUTO, DEFAULT_ENGINE, Engine, build_engine
from server.engine_choice import EngineChoice, select_engine
from server.runner import OnnxRunner, Runner

log = logging.getLogger("server.model")


@dataclass(frozen=True)
class ServedModel:
    encoder: Encoder
    runner: Runner


def load_model(config: ServerConfig, resolved: EngineChoice | None = None) -> ServedModel:
    """The model directory's encoder and runner, the runner on the engine of --engine, with the
    cores split among the inference workers. `resolved`: auto's choice, measured once for
    every --processes child by the supervisor (server/engine_probe.py); the runner is built on
    that engine and reports the measurement as its reason.

    The layout depends on the device, known for sure only once the session exists: where
    the CUDA provider is present but fails to start, ONNX Runtime falls back to the CPU, and
    the GPU's layout (one worker with every core) would meet the CPU's worker count. So a
    session that fell back is built again with the CPU's layout (and, with auto, the CPU's
    engines). Raises ModelDirError or EngineError, one line each.
    """
    model = read_model_dir(config.model_dir)
    _ = model.temperature  # a bad one fails in a moment, before any engine loads
    encoder = ModelEncoder(model, config.truncate)

    def build(gpu: bool) -> OnnxRunner:
        engine = engine_builder(config, model, gpu)
        if resolved is not None and not gpu:
            chosen = engine(resolved.name)
            reason = f"auto, measured once by the --processes supervisor for every process: {resolved.reason}"
            choice = EngineChoice(resolved.name, reason, resolved.seconds, resolved.skipped)
        else:
            chosen, choice = select_engine(config.engine, model, engine, encoder.specials, gpu=gpu)
        runner = OnnxRunner(
            model,
            shape_bucket=config.shape_bucket,
            max_batch_size=config.max_batch_size,
            specials=encoder.specials,
            engine=chosen,
        )
        requested = AUTO if resolved is not None else config.engine
        runner.info["engine"] = {"requested": requested, **choice.to_dict(), **runner.info["engine"]}
        return runner

    gpu = wants_gpu(config, model)
    runner = build(gpu)
    if gpu and not uses_cuda(runner.info.get("providers", ())):
        log.warning("model exported for a GPU, but ONNX Runtime's CUDA provider did not start: serving on CPU")
        runner = build(gpu=False)
    if model.temperature is None:
        log.warning(
            "%s has no calibration temperature (config.json serving.temperature): serving uncalibrated "
            "probabilities; re-export the checkpoint with labelled data to calibrate them",
            model.path,
        )
    return ServedModel(encoder, runner)


def wants_gpu(config: ServerConfig, model: ModelDir) -> bool:
    """Only ONNX Runtime runs on a GPU; an engine asked for by name runs where it runs."""
    return cuda_wanted(model.serving) and config.engine in (AUTO, DEFAULT_ENGINE)


def engine_builder(config: ServerConfig, model: ModelDir, gpu: bool) -> Callable[[str], Engine]:
    """Engine name -> that engine for `model`, with the thread layout of `config` on this device."""
    workers, intra = thread_layout(config.inference_workers, config.intra_op_threads, gpu)

    def engine(name: str) -> Engine:
        return build_engine(name, model, workers, intra, config.inter_op_threads, gpu=gpu and name == "ort")

    return engine


def resolve_engine(config: ServerConfig) -> EngineChoice:
    """What --engine resolves to for this config's layout, the engines built, timed and dropped
    (server/engine_probe.py, for the --processes supervisor). Raises ModelDirError or EngineError."""
    model = read_model_dir(config.model_dir)
    gpu = wants_gpu(config, model)
    build = engine_builder(config, model, gpu)
    _, choice = select_engine(config.engine, model, build, model.encoder().specials, gpu=gpu)
    return choice
