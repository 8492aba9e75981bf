"""The model directory: what the exporter writes and the server reads, and its one reader.

model.onnx            the graph (int8 for cpu, fp16 for gpu)
tokenizer.json        the checkpoint's tokenizer, truncation recorded in it
config.json           the checkpoint's config: id2label, plus a `serving` block (truncation,
                      quantization, target, name, version, and the calibration `temperature`
                      the server divides logits by; absent in a directory exported before it)
export_report.json    optional: parity figures, versions, hashes, the input reference
                      (core/reference.py), calibration figures (core/calibration.py)
reliability.png       optional: the reliability diagram of a calibrated export
robustness.json       optional, written later by `python -m exporter.robustness` (with
                      robustness.md): accuracy on slices of the test set; GET /v1/model shows
                      its summary. A new export replaces the directory, and drops it.
openvino_model.xml    optional, with openvino_model.bin: the static int8 OpenVINO IR of
                      `python -m exporter --openvino-int8`, gated like model.onnx; the server's
                      openvino engine reads it instead of model.onnx. The export report's
                      `engines` block says which engine ran which graph through the parity gate.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.calibration import check_temperature
from core.reference import BadReference, InputReference, read_reference
from core.tokenization import TextEncoder, TruncationConfig

MODEL_FILES = ("model.onnx", "tokenizer.json", "config.json")  # what the server needs
REPORT_FILE = "export_report.json"
EXPORTED_FILES = (*MODEL_FILES, REPORT_FILE)  # what the exporter writes, nothing else...
RELIABILITY_FILE = "reliability.png"  # ...but this, where it fitted a temperature
ROBUSTNESS_FILE = "robustness.json"
ROBUSTNESS_MARKDOWN = "robustness.md"
OPENVINO_FILES = ("openvino_model.xml", "openvino_model.bin")  # optional, both or neither
# No truncation mode: encode everything, then let the caller refuse texts over max_length.
NO_LIMIT = 1 << 30


class ModelDirError(Exception):
    """The model directory is missing or malformed (one-line message)."""


@dataclass(frozen=True)
class ModelDir:
    """A checked model directory: its config.json, its export report and what they say."""

    path: Path
    config: dict[str, Any]
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def serving(self) -> dict[str, Any]:
        serving = self.config.get("serving", {})
        return serving if isinstance(serving, dict) else {}

    @property
    def labels(self) -> tuple[str, ...]:
        id2label = {int(k): str(v) for k, v in self.config["id2label"].items()}
        return tuple(id2label[i] for i in sorted(id2label))

    @property
    def truncation(self) -> TruncationConfig:
        return TruncationConfig.from_dict(self.serving.get("truncation", {}))

    @property
    def graph(self) -> Path:
        return self.path / "model.onnx"

    @property
    def openvino_ir(self) -> Path | None:
        """The static int8 OpenVINO IR's .xml (its .bin beside it), None where the export wrote none."""
        xml = self.path / OPENVINO_FILES[0]
        return xml if xml.is_file() else None

    def checked_engines(self) -> dict[str, dict[str, Any]]:
        """export_report.json's `engines` block: engine name -> the graph it ran and its parity
        figures, for each engine the export gate checked. A directory exported before engines
        were recorded was checked on ONNX Runtime's CPU provider only (its `parity` block)."""
        block = self.report.get("engines")
        if isinstance(block, dict):
            return {str(k): v for k, v in block.items() if isinstance(v, dict)}
        return {"ort": {"graph": "model.onnx", **self.parity_summary()}} if self.report.get("parity") else {}

    def encoder(self, truncate: bool = True) -> TextEncoder:
        """The serving tokenizer. `truncate=False` encodes whole texts (the caller refuses the
        ones over `truncation.max_length`)."""
        truncation = self.truncation if truncate else TruncationConfig(max_length=NO_LIMIT)
        try:
            return TextEncoder.from_file(self.path / "tokenizer.json", truncation)
        except Exception as exc:
            raise ModelDirError(f"{self.path / 'tokenizer.json'}: cannot load tokenizer ({exc})") from None

    @property
    def temperature(self) -> float | None:
        """The calibration temperature of config.json's serving block, None where the export
        fitted none (an older export, random-text parity, --no-calibrate). Raises ModelDirError
        when it is there but not a finite number > 0."""
        value = self.serving.get("temperature")
        if value is None:
            return None
        try:
            return check_temperature(value)
        except ValueError as exc:
            raise ModelDirError(f"{self.path / 'config.json'}: serving.{exc}") from None

    def parity_summary(self) -> dict[str, Any]:
        return parity_summary(self.report)

    def calibration_summary(self) -> dict[str, Any]:
        """The temperature applied (None: uncalibrated) and the export report's calibration
        figures (expected calibration error and accuracy before/after, per split)."""
        return calibration_summary(self.temperature, self.report)

    def reference(self) -> InputReference | None:
        """The export report's input reference (core/reference.py), None where it has none.
        Raises ModelDirError when it is malformed."""
        try:
            return read_reference(self.report)
        except BadReference as exc:
            raise ModelDirError(f"{self.path / REPORT_FILE}: {exc}") from None

    def label_share(self) -> dict[str, float] | None:
        """The training data's label share from the reference, None where unknown (never raises:
        a malformed reference must not stop a server)."""
        try:
            ref = read_reference(self.report)
        except BadReference:
            return None
        return ref.label_share if ref is not None else None

    def robustness_summary(self) -> dict[str, Any] | None:
        """The served graph's figures from robustness.json, None where there is none (never
        raises: a malformed report must not stop a server)."""
        try:
            report = json.loads((self.path / ROBUSTNESS_FILE).read_text())
        except (OSError, ValueError):
            return None
        return robustness_summary(report)


def read_model_dir(model_dir: str | Path) -> ModelDir:
    """The one reader of a model directory, with one-line errors for a broken one."""
    path = Path(model_dir)
    if not path.is_dir():
        raise ModelDirError(f"model directory {path} does not exist")
    missing = [name for name in MODEL_FILES if not (path / name).is_file()]
    if missing:
        raise ModelDirError(f"model directory {path} lacks {', '.join(missing)}")
    ir = [name for name in OPENVINO_FILES if (path / name).is_file()]
    if len(ir) == 1:
        raise ModelDirError(f"model directory {path} has {ir[0]} without {set(OPENVINO_FILES).difference(ir).pop()}")
    try:
        config = json.loads((path / "config.json").read_text())
        report_path = path / REPORT_FILE
        report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    except (OSError, ValueError) as exc:
        raise ModelDirError(f"model directory {path}: unreadable json ({exc})") from None
    if not isinstance(config, dict) or "id2label" not in config:
        raise ModelDirError(f"{path / 'config.json'} has no id2label")
    return ModelDir(path, config, report if isinstance(report, dict) else {})


def read_serving_config(model_dir: str | Path) -> dict[str, Any]:
    """The `serving` block of a model directory's config.json (labels are in id2label)."""
    return read_model_dir(model_dir).serving


def parity_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The scalar parity figures of export_report.json (agreement, accuracies, max prob diff...)."""
    parity = report.get("parity", {})
    return {k: v for k, v in parity.items() if isinstance(v, (int, float, str, bool))}


def calibration_summary(temperature: float | None, report: dict[str, Any]) -> dict[str, Any]:
    """{"temperature": T or None, "<split>": {scalar figures}} from export_report.json's
    `calibration` block (its `validation` and `test` entries, where present)."""
    summary: dict[str, Any] = {"temperature": temperature}
    block = report.get("calibration")
    if isinstance(block, dict):
        for split in ("validation", "test"):
            figures = block.get(split)
            if isinstance(figures, dict):
                summary[split] = {k: v for k, v in figures.items() if isinstance(v, (int, float, str, bool))}
    return summary


def _number(value: Any) -> float | None:
    """A finite JSON number, else None (json.loads reads NaN and Infinity too)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def robustness_summary(report: Any) -> dict[str, Any] | None:
    """robustness.json cut to what a client shows: the whole sample's accuracy, then each row's
    name, group, size, accuracy, 95% interval, gap in points and flag (the served graph's, "onnx").
    None when the report is not one."""
    if not isinstance(report, dict) or not isinstance(report.get("slices"), list):
        return None
    rows = []
    for entry in [report.get("whole"), *report["slices"]]:
        if not isinstance(entry, dict) or not isinstance(entry.get("onnx"), dict):
            return None
        figures = entry["onnx"]
        ci = figures.get("ci95")
        rows.append(
            {
                "name": str(entry.get("name", "")),
                "group": str(entry.get("group", "")),
                "size": int(_number(entry.get("size")) or 0),
                "accuracy": _number(figures.get("accuracy")),
                "ci95": [_number(x) for x in ci] if isinstance(ci, list) and len(ci) == 2 else None,
                "gap_points": _number(figures.get("gap_points")),
                "flagged": figures.get("flagged") is True,
            }
        )
    whole, *slices = rows
    return {
        "samples": whole["size"],
        "accuracy": whole["accuracy"],
        "flag_points": _number(report.get("flag_points")),
        "slices": slices,
    }
