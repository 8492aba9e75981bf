"""`python -m loadtest.demo` (`make demo`): the whole product in one command, in minutes on a CPU.

Steps, each with a banner and its duration:
  1. data     put IMDB at --data-dir (links the shared copy when there is one, else downloads)
  2. train    fine-tune the packaged MiniLM briefly on a subset (the full recipe is `make train`)
  3. export   int8 ONNX model directory, gated on parity with PyTorch
  4. serve    start `python -m server` and wait for /readyz
  5. query    post a few real test reviews and print the answers
  6. load     `python -m loadtest` for --run-time with the p95 <= 200 ms SLA gate
  7. stop     SIGTERM: the server drains and exits 0
Steps 2-3 are skipped when --model-dir already holds a model (use --force to rebuild it), so a
second run costs only the serving part. Exit status: 0 all passed, 1 the SLA gate failed,
2 a step failed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

from core.labels import ID2LABEL
from loadtest.procs import ServedProcess

SAMPLE_REVIEWS = [  # used when the dataset is not available (e.g. a model dir brought from elsewhere)
    ("A charming, funny film with a wonderful cast. I would happily watch it again.", 1),
    ("Dreadful. I walked out after forty minutes; the plot made no sense at all.", 0),
    ("Great direction, great music, great performances. Highly recommended!", 1),
    ("Terrible editing, wooden dialogue and a painfully slow second half.", 0),
]
LABELS = ID2LABEL


@dataclass(frozen=True)
class DemoConfig:
    data_dir: Path = field(default=Path("data/imdb"), metadata={"help": "dataset directory (train/test.parquet)"})
    shared_data_dir: Path = field(
        default=Path("../shared/data/imdb"), metadata={"help": "shared copy of the dataset to link, if it exists"}
    )
    train_config: Path = field(default=Path("configs/minilm.yaml"), metadata={"help": "trainer YAML config"})
    checkpoint: Path = field(default=Path("artifacts/checkpoint"), metadata={"help": "trainer output"})
    model_dir: Path = field(default=Path("artifacts/model"), metadata={"help": "exporter output, served"})
    report_dir: Path = field(default=Path("reports/demo"), metadata={"help": "server log and load test reports"})
    # A few minutes on 2 cores: 2,000 reviews at 128 word pieces for one epoch.
    train_samples: int = field(default=2000, metadata={"help": "training reviews (the full recipe uses 22,500)"})
    eval_samples: int = field(default=500, metadata={"help": "validation and test reviews evaluated"})
    max_length: int = field(default=128, metadata={"help": "word pieces per review (head+tail truncation)"})
    epochs: int = field(default=1, metadata={"help": "training epochs"})
    # Smaller batches and a higher peak rate than configs/minilm.yaml: one short epoch then takes
    # twice the optimizer steps for the same CPU time, which a brief fine-tune needs to converge.
    batch_size: int = field(default=16, metadata={"help": "training batch size"})
    lr: float = field(default=1e-4, metadata={"help": "peak learning rate"})
    host: str = field(default="127.0.0.1", metadata={"help": "address the server listens on"})
    port: int = field(default=0, metadata={"help": "server port; 0 picks a free one"})
    users: int = field(default=20, metadata={"help": "concurrent load test users"})
    run_time: str = field(default="30s", metadata={"help": "load test duration"})
    sla_p95_ms: float = field(default=200.0, metadata={"help": "p95 latency SLA, ms"})
    ready_timeout_s: float = field(default=120.0, metadata={"help": "longest wait for /readyz"})
    force: bool = field(default=False, metadata={"help": "train and export even when --model-dir exists"})

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"--lr must be > 0, got {self.lr}")
        for name in ("train_samples", "eval_samples", "max_length", "epochs", "batch_size", "users"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be in 0..65535, got {self.port}")
        if self.max_length < 16:
            raise ValueError(f"--max-length must be >= 16, got {self.max_length}")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not the whole usage block
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_config(argv: Sequence[str] | None = None) -> DemoConfig:
    parser = _Parser(prog="python -m loadtest.demo", description=__doc__.split("\n")[0])
    for f in fields(DemoConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata['help']} (default: {f.default})"
        if f.type in ("bool", bool):
            parser.add_argument(flag, action="store_true", help=help_text)
        else:
            kind = {"Path": Path, "int": int, "float": float, "str": str}[str(f.type)]
            parser.add_argument(flag, type=kind, default=f.default, help=help_text)
    args = parser.parse_args(argv)
    try:
        return DemoConfig(**vars(args))
    except ValueError as exc:
        parser.error(str(exc))


def has_model(model_dir: Path) -> bool:
    return (model_dir / "model.onnx").is_file() and (model_dir / "config.json").is_file()


def has_data(data_dir: Path) -> bool:
    return (data_dir / "train.parquet").is_file() and (data_dir / "test.parquet").is_file()


# ---------------------------------------------------------------- commands (pure, tested)


def data_command(cfg: DemoConfig) -> list[str]:
    cmd = [sys.executable, "-m", "trainer", "data", "--output-dir", str(cfg.data_dir)]
    if cfg.shared_data_dir.is_dir():
        cmd += ["--shared-dir", str(cfg.shared_data_dir)]
    return cmd


def train_command(cfg: DemoConfig) -> list[str]:
    sets = {
        "max_train_samples": cfg.train_samples,
        "max_eval_samples": cfg.eval_samples,
        "max_length": cfg.max_length,
        "head_tokens": cfg.max_length // 2,
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "warmup_ratio": 0.1,
        "early_stopping_patience": 0,
        "save_state_every_steps": 0,
        "log_every_steps": 10,
    }
    cmd = [
        sys.executable,
        "-m",
        "trainer",
        "train",
        "--config",
        str(cfg.train_config),
        "--data-dir",
        str(cfg.data_dir),
        "--output-dir",
        str(cfg.checkpoint),
    ]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}"]
    return cmd


def export_command(cfg: DemoConfig) -> list[str]:
    # The exporter's default gate (<= 0.5 accuracy points lost, >= 98% label agreement) applies.
    return [
        sys.executable,
        "-m",
        "exporter",
        "--checkpoint",
        str(cfg.checkpoint),
        "--output-dir",
        str(cfg.model_dir),
        "--quantize",
        "int8",
        "--eval-data",
        str(cfg.data_dir),
        "--eval-samples",
        str(cfg.eval_samples),
    ]


def server_command(cfg: DemoConfig) -> list[str]:
    """Without --port: ServedProcess adds it (cfg.port, or a free one)."""
    return [sys.executable, "-m", "server", "--model-dir", str(cfg.model_dir), "--host", cfg.host]


def loadtest_command(cfg: DemoConfig, url: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "loadtest",
        "--host",
        url,
        "--users",
        str(cfg.users),
        "--spawn-rate",
        str(cfg.users),
        "--run-time",
        cfg.run_time,
        "--sla-p95-ms",
        f"{cfg.sla_p95_ms:g}",
        "--report-dir",
        str(cfg.report_dir / "loadtest"),
    ]


# ---------------------------------------------------------------- HTTP helpers (stdlib only)


def http_json(url: str, payload: dict | None = None, timeout: float = 10.0) -> tuple[int, dict]:
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


_SAMPLE = re.compile(r"^(sentiment_[a-z_]+)(\{[^}]*\})? ([0-9.eE+-]+|NaN)$")


def metric_totals(text: str) -> dict[str, float]:
    """Sum of each series name over its labels (e.g. sentiment_batch_size_sum -> total texts)."""
    totals: dict[str, float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m and m.group(3) != "NaN":
            totals[m.group(1)] = totals.get(m.group(1), 0.0) + float(m.group(3))
    return totals


def server_summary(text: str) -> dict[str, float]:
    t = metric_totals(text)
    batches = t.get("sentiment_batch_size_count", 0.0)
    out = {"batches": batches}
    if batches:
        out["mean_batch_size"] = t["sentiment_batch_size_sum"] / batches
        out["texts"] = t["sentiment_batch_size_sum"]
    if t.get("sentiment_padding_ratio_count"):
        out["mean_padding_ratio"] = t["sentiment_padding_ratio_sum"] / t["sentiment_padding_ratio_count"]
    return out


def pick_reviews(data_dir: Path, n: int = 4, seed: int = 7) -> list[tuple[str, int]]:
    """n test reviews, half of each label, of readable length; the built-in samples without data.

    Where the data has IMDB's star ratings, only clear-cut ones (1-2 or 9-10 stars): a demo of a
    briefly trained model should show what it does, not its coin flips on 4-star reviews.
    """
    path = data_dir / "test.parquet"
    if not path.is_file():
        return SAMPLE_REVIEWS[:n]
    import pandas as pd  # demo-only dependency: the server never imports this module

    df = pd.read_parquet(path)
    df = df[df["text"].str.len().between(200, 900)]
    if "rating" in df.columns:
        df = df[(df["rating"] <= 2) | (df["rating"] >= 9)]
    rows = []
    for label in (1, 0):
        part = df[df["label"] == label]
        rows += part.sample(n=min(len(part), (n + 1) // 2), random_state=seed).itertuples(index=False)
    random.Random(seed).shuffle(rows)
    return [(str(r.text), int(r.label)) for r in rows[:n]]


# ---------------------------------------------------------------- running steps


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


def _shorten(arg: str) -> str:
    return "python" if arg == sys.executable else arg


def run(cfg: DemoConfig) -> int:
    demo = Demo(cfg)
    started = time.monotonic()
    build_model = cfg.force or not has_model(cfg.model_dir)
    total = 7
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
            if not build_model:
                return f"skipped: {cfg.model_dir} already holds a model (--force rebuilds it)"
            demo.run_command(train_command(cfg))
            metrics = json.loads((cfg.checkpoint / "metrics.json").read_text())
            acc = metrics["test"]["accuracy"]
            demo.notes["test accuracy (PyTorch)"] = (
                f"{acc:.4f} on {metrics['test'].get('samples', '?')} "
                f"test reviews after {metrics['train_time_s']:.0f} s of training "
                f"({metrics['train_samples_per_s']:.1f} samples/s)"
            )
            return f"test accuracy {acc:.4f}, checkpoint {cfg.checkpoint}"

        demo.step(
            2,
            total,
            "train",
            f"fine-tune packaged MiniLM on {cfg.train_samples} reviews, "
            f"max_length {cfg.max_length}, {cfg.epochs} epoch(s), on the CPU",
            train,
        )

        def export() -> str:
            if not build_model:
                return "skipped: using the existing model directory"
            demo.run_command(export_command(cfg))
            report = json.loads((cfg.model_dir / "export_report.json").read_text())
            parity = report.get("parity", {})
            size_mb = (cfg.model_dir / "model.onnx").stat().st_size / 1e6
            demo.notes["int8 ONNX parity"] = (
                f"label agreement {parity.get('label_agreement', float('nan')):.4f}, ONNX accuracy "
                f"{parity.get('onnx_accuracy') or float('nan'):.4f} vs PyTorch "
                f"{parity.get('pytorch_accuracy') or float('nan'):.4f}, model.onnx {size_mb:.1f} MB"
            )
            return demo.notes["int8 ONNX parity"]

        demo.step(3, total, "export", f"{cfg.checkpoint} -> {cfg.model_dir} (int8 ONNX, parity-gated)", export)

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

        demo.step(4, total, "serve", f"start the server on {cfg.model_dir}", serve)

        def query() -> str:
            reviews = pick_reviews(cfg.data_dir, n=6)
            correct = 0
            for text, label in reviews:
                t0 = time.perf_counter()
                status, body = http_json(url + "/v1/predict", {"text": text})
                ms = (time.perf_counter() - t0) * 1000
                if status != 200:
                    raise StepError(f"POST /v1/predict answered {status}: {body}")
                correct += body["label"] == LABELS[label]
                demo.say(f"\n  review: {text[:160]}{'...' if len(text) > 160 else ''}")
                demo.say(
                    f"  truth: {LABELS[label]:<8}  answer: {body['label']:<8} score {body['score']:.3f}  ({ms:.0f} ms)"
                )
            status, body = http_json(url + "/v1/predict", {"texts": [t for t, _ in reviews]})
            if status != 200 or len(body.get("predictions", [])) != len(reviews):
                raise StepError(f"multi-text request answered {status}: {body}")
            demo.say(f"\n  one request with all {len(reviews)} texts: {[p['label'] for p in body['predictions']]}")
            return f"{correct}/{len(reviews)} answers match the true labels"

        demo.step(5, total, "query", "a few real test reviews, one request each, then one batch request", query)

        def load() -> str:
            nonlocal sla_code
            cmd = loadtest_command(cfg, url)
            demo.say("$ " + " ".join(_shorten(c) for c in cmd))
            lines = []
            with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
                for line in proc.stdout:  # echoed as it comes, kept for the verdict
                    demo.say(line.rstrip())
                    if line.strip():
                        lines.append(line.strip())
            verdict = lines[-1] if lines else "no output"
            if proc.returncode == 2:
                raise StepError(f"the load test could not run: {verdict}")
            sla_code = proc.returncode
            summary = server_summary(server.get_text("/metrics"))
            if summary.get("batches"):
                demo.notes["server batching"] = (
                    f"{summary['texts']:.0f} texts in {summary['batches']:.0f} batches, mean batch size "
                    f"{summary['mean_batch_size']:.2f}, mean padding ratio {summary.get('mean_padding_ratio', 0):.3f}"
                )
            demo.notes["load test"] = verdict
            return verdict

        demo.step(6, total, "load", f"{cfg.users} users for {cfg.run_time}, SLA p95 <= {cfg.sla_p95_ms:g} ms", load)
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
            demo.step(7, 7, "stop", "SIGTERM the server (readiness 503, drain, exit 0)", stop)
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


def main(argv: Sequence[str] | None = None) -> int:
    return run(parse_config(argv))


if __name__ == "__main__":
    sys.exit(main())
