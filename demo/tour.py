"""The demo's eight steps, each with a banner and its duration, then a summary.

  1. data      put IMDB at --data-dir (links the shared copy when there is one, else downloads)
  2. train     fine-tune the packaged MiniLM with this machine's recipe (demo/recipes.py)
  3. export    int8 ONNX model directory, gated on parity with PyTorch, scored on every test review
  4. baseline  TF-IDF + logistic regression on the same test reviews, the bar the model must clear
  5. serve     start `python -m server` and wait for /readyz
  6. query     post a few real test reviews and print the answers
  7. load      `python -m loadtest` for --run-time with the p95 <= 200 ms SLA gate
  8. stop      SIGTERM: the server drains and exits 0
Steps 2-4 are skipped when --model-dir already holds a model (use --force to rebuild it), so a
second run costs only the serving part. Exit status: 0 all passed, 1 the SLA gate failed,
2 a step failed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.procs import ServedProcess
from core.labels import ID2LABEL
from core.modeldir import ModelDirError, read_model_dir
from demo.commands import (
    baseline_command,
    data_command,
    export_command,
    loadtest_command,
    server_command,
    train_command,
)
from demo.config import DemoConfig
from demo.queries import http_json, pick_reviews, server_summary
from demo.recipes import Recipe, choose, machine_precision


def has_model(model_dir: Path) -> bool:
    try:
        read_model_dir(model_dir)
    except ModelDirError:
        return False
    return True


def has_data(data_dir: Path) -> bool:
    return (data_dir / "train.parquet").is_file() and (data_dir / "test.parquet").is_file()


class StepError(Exception):
    """A step failed; the message says which and why."""


class Demo:
    """Prints banners and keeps each step's time and one-line result for the summary."""

    def __init__(self, cfg: DemoConfig) -> None:
        self.cfg = cfg
        self.timings: list[tuple[str, float, str]] = []
        self.notes: dict[str, str] = {}

    def say(self, text: str = "") -> None:
        print(text, flush=True)

    def step(self, number: int, total: int, name: str, what: str, fn: Callable[[], str]) -> str:
        self.say()
        self.say("=" * 78)
        self.say(f"[{number}/{total}] {name}: {what}")
        self.say("=" * 78)
        start = time.monotonic()
        try:
            result = fn()
        except StepError as exc:
            elapsed = time.monotonic() - start
            self.timings.append((name, elapsed, f"FAILED: {exc}"))
            self.say(f"---- {name} FAILED after {elapsed:.1f} s: {exc}")
            raise
        elapsed = time.monotonic() - start
        self.timings.append((name, elapsed, result))
        self.say(f"---- {name} done in {elapsed:.1f} s: {result}")
        return result

    def run_command(self, cmd: list[str]) -> None:
        self.say("$ " + " ".join(_shorten(c) for c in cmd))
        code = subprocess.run(cmd).returncode  # output streams straight to the terminal
        if code != 0:
            raise StepError(f"{' '.join(cmd[1:4])} exited with status {code}")


# Measured (docs/RESULTS.md, "Accuracy"): the shipped recipe's figures, for the summary's last word.
FULL_RECIPE = (
    "`make train` + `make export` (configs/minilm.yaml: 22,500 reviews, 3 epochs, 256 tokens) reached 92.45% "
    "on all 25,000 test reviews; 96 s of training on one H100, ~2.9 h on 2 CPU cores in fp32 "
    "(6.4 samples/s, extrapolated)"
)


def baseline_line(accuracy: float, samples: int, baseline: dict) -> str:
    """The served model beside TF-IDF + logistic regression, both on the same test reviews."""
    gap = 100 * (accuracy - baseline["accuracy"])
    verdict = "beats" if gap > 0 else "does not beat"
    return (
        f"served int8 model {accuracy:.4f} vs TF-IDF + logistic regression {baseline['accuracy']:.4f} "
        f"on the same {samples:,} test reviews: the demo model {verdict} the baseline ({gap:+.1f} points)"
    )


def recipe_line(cfg: DemoConfig, recipe: Recipe) -> str:
    if cfg.train_samples:
        return f"--train-samples {cfg.train_samples:,} (instead of this machine's recipe, {recipe.samples_text})"
    return f"{recipe.name}: {recipe.samples_text}, because {recipe.why}; when measured it {recipe.measured}"


def _shorten(arg: str) -> str:
    return "python" if arg == sys.executable else arg


def run(cfg: DemoConfig) -> int:
    demo = Demo(cfg)
    started = time.monotonic()
    build_model = cfg.force or not has_model(cfg.model_dir)
    recipe = choose(machine_precision()) if build_model else None
    total = 8
    cfg.report_dir.mkdir(parents=True, exist_ok=True)
    server: ServedProcess | None = None
    url = ""
    sla_code = 0
    demo.say(
        f"demo: {'train + export + ' if build_model else ''}serve + query + load test; "
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
    )
    try:

        def data() -> str:
            if has_data(cfg.data_dir):
                return f"{cfg.data_dir} already in place"
            demo.run_command(data_command(cfg))
            return f"{cfg.data_dir} ready"

        demo.step(1, total, "data", f"IMDB reviews at {cfg.data_dir}", data)

        def train() -> str:
            if recipe is None:
                return f"skipped: {cfg.model_dir} already holds a model (--force rebuilds it)"
            demo.notes["recipe"] = recipe_line(cfg, recipe)
            demo.say("recipe " + demo.notes["recipe"])
            demo.run_command(train_command(cfg, recipe))
            metrics = json.loads((cfg.checkpoint / "metrics.json").read_text())
            acc = metrics["test"]["accuracy"]
            demo.notes["test accuracy (PyTorch)"] = (
                f"{acc:.4f} on {metrics['test'].get('samples', '?')} "
                f"test reviews after {metrics['train_time_s']:.0f} s of training "
                f"({metrics['train_samples_per_s']:.1f} samples/s)"
            )
            samples = metrics["test"].get("samples", "?")
            return f"test accuracy {acc:.4f} on {samples} reviews, checkpoint {cfg.checkpoint}"

        samples = f"{cfg.train_samples:,} reviews" if cfg.train_samples else "this machine's recipe"
        demo.step(
            2,
            total,
            "train",
            f"fine-tune packaged MiniLM on {samples}, max_length {cfg.max_length}, {cfg.epochs} epoch(s)",
            train,
        )

        parity: dict = {}  # the export's parity block, which the baseline step compares with

        def export() -> str:
            if not build_model:
                return "skipped: using the existing model directory"
            demo.run_command(export_command(cfg))
            report = json.loads((cfg.model_dir / "export_report.json").read_text())
            parity.update(report.get("parity", {}))
            size_mb = (cfg.model_dir / "model.onnx").stat().st_size / 1e6
            demo.notes["int8 ONNX parity"] = (
                f"label agreement {parity.get('label_agreement', float('nan')):.4f}, ONNX accuracy "
                f"{parity.get('onnx_accuracy') or float('nan'):.4f} vs PyTorch "
                f"{parity.get('pytorch_accuracy') or float('nan'):.4f} on {parity.get('samples', '?')} "
                f"validation reviews, model.onnx {size_mb:.1f} MB"
            )
            if parity.get("test_accuracy") is not None:
                demo.notes["served int8 model"] = (
                    f"accuracy {parity['test_accuracy']:.4f} on all {parity['test_samples']:,} test reviews, "
                    "through the server's preprocessing"
                )
            calibration = report.get("calibration") or {}
            if calibration.get("temperature") is not None:
                split = calibration.get("test") or calibration.get("validation") or {}
                demo.notes["calibration"] = (
                    f"temperature {calibration['temperature']:.3f}, expected calibration error "
                    f"{split.get('ece_before', float('nan')):.4f} -> {split.get('ece_after', float('nan')):.4f}"
                )
            return demo.notes["int8 ONNX parity"]

        demo.step(3, total, "export", f"{cfg.checkpoint} -> {cfg.model_dir} (int8 ONNX, parity-gated)", export)

        def baseline() -> str:
            if not build_model:
                return "skipped: no new model to compare"
            demo.run_command(baseline_command(cfg))
            base = json.loads((cfg.report_dir / "baseline" / "metrics.json").read_text())["test"]
            if parity.get("test_accuracy") is not None:
                demo.notes["against the TF-IDF baseline"] = baseline_line(
                    parity["test_accuracy"], parity["test_samples"], base
                )
            demo.notes["the full recipe"] = FULL_RECIPE
            return f"TF-IDF + logistic regression {base['accuracy']:.4f} on {base.get('samples', '?')} test reviews"

        demo.step(4, total, "baseline", "TF-IDF + logistic regression on the same test reviews", baseline)

        def serve() -> str:
            nonlocal server, url
            if not has_model(cfg.model_dir):
                raise StepError(f"no model in {cfg.model_dir}")
            log_path = cfg.report_dir / "server.log"
            candidate = ServedProcess(
                server_command(cfg), log_path, ready_timeout_s=cfg.ready_timeout_s, host=cfg.host, port=cfg.port
            )
            demo.say("$ " + " ".join(_shorten(c) for c in candidate.cmd) + f"   (log: {log_path})")
            try:
                server = candidate.start()  # stopped by _finish, after the steps that use it
            except RuntimeError as exc:
                demo.say("server log (last lines):\n" + _tail(log_path, 15))
                raise StepError(str(exc)) from None
            url = server.url
            return f"{url} ready after {server.ready_s:.1f} s"

        demo.step(5, total, "serve", f"start the server on {cfg.model_dir}", serve)

        def query() -> str:
            reviews = pick_reviews(cfg.data_dir, n=6)
            correct = 0
            for text, label in reviews:
                t0 = time.perf_counter()
                status, body = http_json(url + "/v1/predict", {"text": text})
                ms = (time.perf_counter() - t0) * 1000
                if status != 200:
                    raise StepError(f"POST /v1/predict answered {status}: {body}")
                correct += body["label"] == ID2LABEL[label]
                demo.say(f"\n  review: {text[:160]}{'...' if len(text) > 160 else ''}")
                answer = f"answer: {body['label']:<8} score {body['score']:.3f}  ({ms:.0f} ms)"
                demo.say(f"  truth: {ID2LABEL[label]:<8}  {answer}")
            status, body = http_json(url + "/v1/predict", {"texts": [t for t, _ in reviews]})
            if status != 200 or len(body.get("predictions", [])) != len(reviews):
                raise StepError(f"multi-text request answered {status}: {body}")
            demo.say(f"\n  one request with all {len(reviews)} texts: {[p['label'] for p in body['predictions']]}")
            return f"{correct}/{len(reviews)} answers match the true labels"

        demo.step(6, total, "query", "a few real test reviews, one request each, then one batch request", query)

        def load() -> str:
            nonlocal sla_code
            cmd = loadtest_command(cfg, url)
            demo.say("$ " + " ".join(_shorten(c) for c in cmd))
            lines = []
            with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
                assert proc.stdout is not None  # stdout=PIPE
                for line in proc.stdout:  # echoed as it comes, kept for the verdict
                    demo.say(line.rstrip())
                    if line.strip():
                        lines.append(line.strip())
            verdict = lines[-1] if lines else "no output"
            if proc.returncode == 2:
                raise StepError(f"the load test could not run: {verdict}")
            sla_code = proc.returncode
            if server is None:  # the serve step raised before this one could run
                raise StepError("no server to read /metrics from")
            summary = server_summary(server.get_text("/metrics"))
            if summary.get("batches"):
                demo.notes["server batching"] = (
                    f"{summary['texts']:.0f} texts in {summary['batches']:.0f} batches, mean batch size "
                    f"{summary['mean_batch_size']:.2f}, mean padding ratio {summary.get('mean_padding_ratio', 0):.3f}"
                )
            demo.notes["load test"] = verdict
            return verdict

        demo.step(7, total, "load", f"{cfg.users} users for {cfg.run_time}, SLA p95 <= {cfg.sla_p95_ms:g} ms", load)
    except StepError:
        return _finish(demo, server, started, 2)
    except KeyboardInterrupt:
        demo.say("\ninterrupted")
        return _finish(demo, server, started, 2)
    return _finish(demo, server, started, 1 if sla_code else 0)


def _finish(demo: Demo, server: ServedProcess | None, started: float, code: int) -> int:
    if server is not None and server.running:

        def stop() -> str:
            status, seconds = server.stop(timeout_s=20.0)
            if status != 0:
                raise StepError(f"the server exited with {status} after SIGTERM (killed after {seconds:.1f} s)")
            return f"drained and exited 0 in {seconds:.1f} s"

        try:
            demo.step(8, 8, "stop", "SIGTERM the server (readiness 503, drain, exit 0)", stop)
        except StepError:
            code = max(code, 2)
    total = time.monotonic() - started
    demo.say()
    demo.say("=" * 78)
    demo.say(f"summary ({total / 60:.1f} min in all)")
    demo.say("=" * 78)
    for name, seconds, result in demo.timings:
        demo.say(f"  {name:<7} {seconds:7.1f} s  {result}")
    for key, value in demo.notes.items():
        demo.say(f"  {key}: {value}")
    verdict = {0: "demo: PASS", 1: "demo: FAIL (the load test broke the SLA)", 2: "demo: FAIL (a step failed)"}[code]
    if code == 0:
        verdict += f"; the model stays in {demo.cfg.model_dir}: `python -m server --model-dir {demo.cfg.model_dir}`"
        verdict += " (`make serve`) serves it again" if demo.cfg.model_dir == Path("artifacts/model") else ""
    demo.say(verdict)
    return code


def _tail(path: Path, n: int) -> str:
    lines = path.read_text(errors="replace").splitlines() if path.is_file() else []
    return "\n".join(lines[-n:])
