"""`python -m exporter`: checkpoint -> parity-gated ONNX model directory.

Exit codes: 0 exported; 1 the parity gate (or the export itself) failed; 2 bad
arguments or a missing/broken checkpoint. Every failure is one line on stderr, and
the output directory is either the previous one or the complete new one: the model
is built in a hidden sibling directory and renamed into place only after the gate.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

from tokenizers import Tokenizer

from core.modeldir import EXPORTED_FILES, OPENVINO_FILES, RELIABILITY_FILE
from exporter.config import ExportConfig, parse_config
from exporter.export import Checkpoint, CheckpointError, export_onnx, load_checkpoint

log = logging.getLogger("exporter")
MODEL_FILES = EXPORTED_FILES  # the model directory, as core.modeldir defines it


class UsageError(Exception):
    """Bad input that is not the checkpoint's fault (exit 2)."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "(no message)"


def _fail(message: str, code: int) -> int:
    print(f"exporter: error: {message}", file=sys.stderr)
    return code


def _check_output_dir(path: Path) -> None:
    """Replace a previous model directory, never an unrelated one."""
    if path.exists():
        if not path.is_dir():
            raise UsageError(f"--output-dir {path} exists and is not a directory")
        entries = {p.name for p in path.iterdir()}
        if entries and "export_report.json" not in entries:
            raise UsageError(f"--output-dir {path} is not empty and not a model directory; refusing to replace it")


def _publish(stage: Path, output_dir: Path) -> None:
    """Swap `stage` into place; the previous model survives if the swap fails."""
    if not output_dir.exists():
        stage.rename(output_dir)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-", dir=output_dir.parent))
    output_dir.rename(old / "model")
    try:
        stage.rename(output_dir)
    except OSError:
        (old / "model").rename(output_dir)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def build_graph(cfg: ExportConfig, ckpt: Checkpoint, work: Path, dst: Path) -> tuple[list[str], str | None]:
    """Write the graph to serve at `dst`; returns the pipeline steps and the int8 ISA."""
    from exporter import optimize, quantize

    fp32 = export_onnx(ckpt, work, cfg.opset)
    steps = [f"optimum export fp32 (opset {cfg.opset or 'default'}, dynamic batch/sequence)"]
    model_type = str(ckpt.model.config.model_type)
    quant = cfg.resolved_quantization
    isa = None
    if quant == "int8":
        isa = quantize.detect_isa() if cfg.isa == "auto" else cfg.isa
        steps += optimize.optimize_then_quantize(
            fp32, dst, model_type, cfg.optimize, isa, cfg.per_channel, cfg.quantize_embeddings
        )
        return steps, isa
    use_gpu = cfg.target == "gpu"
    fused = dst if quant == "none" else fp32.parent / "fused.onnx"
    stats = optimize.fuse(fp32, fused, model_type, cfg.optimize, use_gpu=use_gpu)
    steps.append(f"fusions {cfg.optimize} {stats}" if stats else f"fusions {cfg.optimize}")
    if quant == "fp16":
        quantize.convert_fp16(fused, dst)
        steps.append("fp16 conversion (inputs int64, logits fp32 kept)")
    return steps, isa


def fit_calibration(cfg: ExportConfig, eval_set, logits) -> tuple[float | None, dict]:
    """The temperature fitted on the eval reviews' ONNX logits, or None and why not."""
    from exporter import calibrate

    if not cfg.calibrate:
        return None, calibrate.skipped("--no-calibrate: the server serves softmax(logits)")
    if eval_set.labels is None:
        log.info("calibration skipped: random text has no labels to fit a temperature on")
        return None, calibrate.skipped("random text (no labelled eval data): no labels to fit a temperature on")
    return calibrate.fit(logits, eval_set.labels, eval_set.source)


def held_out_logits(stage: Path, session, eval_set):
    """The graph's logits for the held-out test reviews, ids from the staged model directory as
    the server reads it (its tokenizer and truncation), with a progress bar; None without them."""
    from core.modeldir import read_model_dir
    from exporter import calibrate

    if not eval_set.held_out_texts:
        return None
    log.info("scoring %d held-out test reviews from %s", len(eval_set.held_out_texts), eval_set.held_out_source)
    try:
        from tqdm import tqdm
    except ImportError:  # the train extra brings it; without it, no bar
        return calibrate.held_out_logits(session, read_model_dir(stage).encoder(), eval_set.held_out_texts)
    # Redrawn ten times a second on a terminal; into a log file, a line every 30 s is enough.
    interval = 0.1 if sys.stderr.isatty() else 30.0
    with tqdm(
        total=len(eval_set.held_out_texts), desc="exporter: test reviews", unit="review", mininterval=interval
    ) as bar:
        done = [0]

        def advance(n: int) -> None:
            bar.update(n - done[0])
            done[0] = n

        return calibrate.held_out_logits(
            session, read_model_dir(stage).encoder(), eval_set.held_out_texts, progress=advance
        )


def test_accuracy(logits, eval_set) -> dict:
    """--test-accuracy: the served graph's accuracy on every held-out test review (the parity
    block's test_* figures, which GET /v1/model shows)."""
    import numpy as np

    if logits is None:
        log.warning("--test-accuracy: no held-out test split beside the eval data; not measured")
        return {"test_accuracy": None}
    labels = np.asarray(eval_set.held_out_labels)
    accuracy = float((logits.argmax(-1) == labels).mean())
    log.info("int8 accuracy on %d test reviews: %.4f", len(labels), accuracy)
    return {"test_accuracy": accuracy, "test_samples": len(labels), "test_source": str(eval_set.held_out_source)}


def measure_calibration(stage: Path, logits, eval_set, block: dict) -> None:
    """The temperature on held-out test reviews (their logits through the staged model directory,
    or None), as the server reads it (its stored temperature); then the plot."""
    import numpy as np

    from core.modeldir import read_model_dir
    from exporter import calibrate

    served = read_model_dir(stage)
    temperature = served.temperature
    if temperature is None or temperature != block["temperature"]:
        raise RuntimeError(f"config.json holds temperature {temperature}, fitted {block['temperature']}")
    if logits is not None:
        labels = np.asarray(eval_set.held_out_labels)
        block["test"] = calibrate.split_figures(logits, labels, temperature, str(eval_set.held_out_source))
        log.info(
            "calibration: ECE %.4f -> %.4f on the test reviews", block["test"]["ece_before"], block["test"]["ece_after"]
        )
    splits = {"validation": block["validation"], **({"test": block["test"]} if block["test"] else {})}
    calibrate.plot_reliability(stage / RELIABILITY_FILE, splits, temperature)


def export(cfg: ExportConfig, ckpt: Checkpoint, eval_set, stage: Path, work: Path) -> dict:
    """Build the complete model directory in `stage`; returns the report."""
    from exporter import compare, parity, report

    model_path = stage / "model.onnx"
    log.info(
        "exporting %s (%s, quantize %s, optimize %s)", ckpt.path, cfg.target, cfg.resolved_quantization, cfg.optimize
    )
    steps, isa = build_graph(cfg, ckpt, work, model_path)

    encoder = ckpt.encoder()
    encoder.save_serving_tokenizer(stage / "tokenizer.json")

    session = compare.open_session(model_path, cfg.target, cfg.threads)
    if cfg.target == "gpu" and "CUDAExecutionProvider" not in session.get_providers():
        # the fp16 graph still runs on the CPU EP (slowly): its numbers are checked, not its speed
        log.warning("CUDAExecutionProvider unavailable: parity and latency measured on the CPU EP")
    log.info("parity on %d reviews from %s", len(eval_set.texts), eval_set.source)
    pytorch_probs, onnx_logits = parity.score_eval_set(ckpt.model, session, encoder, eval_set)
    parity_result = parity.parity_report(pytorch_probs, onnx_logits, eval_set)
    parity_result["providers"] = session.get_providers()
    engines = {
        "ort": report.engine_record(
            model_path.name, cfg.resolved_quantization, dict(parity_result), providers=session.get_providers()
        )
    }
    if cfg.openvino_int8:
        from exporter import static_int8

        engines["openvino"] = static_int8.build_and_check(
            work / "fp32" / "model.onnx", stage, encoder, eval_set, pytorch_probs, cfg
        )
        steps.append(f"{engines['openvino']['method']}: {OPENVINO_FILES[0]} (openvino engine)")
    temperature, calibration = fit_calibration(cfg, eval_set, onnx_logits)
    log.info("measuring latency (batch %s, seq %d)", compare.LATENCY_BATCH_SIZES, compare.LATENCY_SEQ_LEN)
    latency_result = compare.measure_latency(
        session,
        cfg.latency_repeats,
        threads=cfg.threads,
        vocab_size=int(ckpt.model.config.vocab_size),
        seed=cfg.seed,
    )

    serving = report.serving_block(
        truncation=ckpt.truncation.to_dict(),
        model_name=cfg.model_name or Path(str(ckpt.training_config["base_model"])).name,
        model_version=cfg.model_version or report.file_sha256(model_path)[:12],
        quantization=cfg.resolved_quantization,
        optimization=cfg.optimize,
        target=cfg.target,
        temperature=temperature,
    )
    hf_config = dict(ckpt.hf_config)
    hf_config["serving"] = serving
    (stage / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    logits = held_out_logits(stage, session, eval_set) if temperature is not None or cfg.test_accuracy else None
    if temperature is not None:
        measure_calibration(stage, logits, eval_set, calibration)
    if cfg.test_accuracy:
        parity_result.update(test_accuracy(logits, eval_set))

    sizes = {"model.onnx": model_path.stat().st_size, "fp32_export.onnx": (work / "fp32" / "model.onnx").stat().st_size}
    if cfg.openvino_int8:
        sizes.update({name: (stage / name).stat().st_size for name in OPENVINO_FILES})
    result = report.build_report(
        checkpoint=ckpt.path,
        training_config=ckpt.training_config,
        config=cfg.to_dict(),
        isa=isa,
        quantization=cfg.resolved_quantization,
        optimization=cfg.optimize,
        graph=report.graph_facts(model_path),
        sizes=sizes,
        parity=parity_result,
        latency=latency_result,
        serving=serving,
        steps=steps,
        reference=report.input_reference(encoder, eval_set, ckpt.hf_config.get("id2label", {})),
        calibration=calibration,
        engines=engines,
    )
    if cfg.openvino_int8:
        from exporter import static_int8

        result["versions"].update(static_int8.versions())
    (stage / "export_report.json").write_text(json.dumps(result, indent=2) + "\n")
    written = sorted(p.name for p in stage.iterdir())
    expected = sorted(
        [
            *MODEL_FILES,
            *([RELIABILITY_FILE] if temperature is not None else []),
            *(OPENVINO_FILES if cfg.openvino_int8 else ()),
        ]
    )
    if written != expected:  # the server's contract: these files and nothing else
        raise RuntimeError(f"model directory would hold {written}, expected {expected}")
    return result


def _calibration_line(block: dict) -> str:
    if block.get("temperature") is None:
        return "uncalibrated"
    split = block["test"] or block["validation"]
    name = "test" if block["test"] else "validation"
    return f"temperature {block['temperature']:.4f}, ECE {name} {split['ece_before']:.4f} -> {split['ece_after']:.4f}"


def _engine_line(name: str, record: dict) -> str:
    figures = record["parity"]
    return (
        f"; {name} {record['graph']} {record['quantization']}: agreement {figures['label_agreement']:.4f}, "
        f"accuracy {figures['onnx_accuracy']}"
    )


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_config(argv)
    except SystemExit as exc:  # argparse: --help (0) or one-line usage error (2)
        return int(exc.code or 0)
    from exporter.parity import EvalDataError, gate_failures, load_eval_set

    try:
        if cfg.openvino_int8:
            from exporter import static_int8

            if reason := static_int8.missing():
                raise UsageError(reason)
        _check_output_dir(cfg.output_dir)
        ckpt = load_checkpoint(cfg.checkpoint)
        # before the export: a wrong --eval-data should fail in seconds, not minutes
        vocab = list(Tokenizer.from_file(str(ckpt.tokenizer_file)).get_vocab())
        held_out = cfg.calibration_test_samples if cfg.calibrate else 0
        if cfg.test_accuracy:  # every test review: the calibration's test figures then use them all too
            held_out = sys.maxsize
        train = cfg.openvino_calibration_samples if cfg.openvino_int8 else 0
        eval_set = load_eval_set(
            cfg.eval_data, cfg.eval_samples, cfg.seed, vocab, ckpt.training_config, held_out, train
        )
    except (CheckpointError, UsageError, EvalDataError) as exc:
        return _fail(str(exc), 2)

    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("exporter: %(message)s"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(cfg.log_level.upper())

    output_dir = cfg.output_dir.resolve()
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", suffix=".tmp", dir=output_dir.parent))
    stage.chmod(0o755)  # mkdtemp makes it private; the published model dir must be readable
    work = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.work-", dir=output_dir.parent))
    try:
        try:
            result = export(cfg, ckpt, eval_set, stage, work)
        except Exception as exc:  # one line for the user; the trace with --log-level debug
            log.debug("export failed", exc_info=True)
            return _fail(f"export failed: {type(exc).__name__}: {_first_line(exc)}", 1)
        reasons = gate_failures(result["parity"], cfg.max_accuracy_drop, cfg.min_agreement)
        for name, record in result["engines"].items():  # every other engine's graph passes the same gate
            if name != "ort":
                failures = gate_failures(record["parity"], cfg.max_accuracy_drop, cfg.min_agreement)
                reasons += [f"{name} ({record['graph']}): {reason}" for reason in failures]
        if reasons:
            return _fail("parity gate failed, nothing written: " + "; ".join(reasons), 1)
        try:
            _publish(stage, output_dir)
        except OSError as exc:
            return _fail(f"cannot move the model into {output_dir}: {exc}", 1)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)

    p = result["parity"]
    lat = result["latency_ms"]["batches"]
    print(
        f"exported {output_dir}: {result['quantization']} {result['optimization']}, "
        f"{result['file_sizes_bytes']['model.onnx'] / 1e6:.1f} MB, agreement {p['label_agreement']:.4f}, "
        f"accuracy pytorch {p['pytorch_accuracy']} onnx {p['onnx_accuracy']}, "
        f"max|dp| {p['max_abs_prob_diff']:.4f}, latency b1 {lat['1']['median_ms']} ms b32 {lat['32']['median_ms']} ms, "
        + _calibration_line(result["calibration"])
        + "".join(_engine_line(name, record) for name, record in result["engines"].items() if name != "ort")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
