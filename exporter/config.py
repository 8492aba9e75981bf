"""Export settings: one frozen dataclass, and the CLI generated from its fields.

Each field is one `--flag` (underscores become dashes), so a setting has one name in
code, on the command line and in export_report.json.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core import cli
from core.cli import opt

TARGETS = ("cpu", "gpu")
QUANTIZATIONS = ("auto", "int8", "fp16", "none")
OPTIMIZATIONS = ("none", "O1", "O2", "O3")
ISAS = ("auto", "avx512_vnni", "avx512", "avx2", "arm64")
OPENVINO_PRESETS = ("mixed", "performance")  # exporter/static_int8.py's NNCF presets


@dataclass(frozen=True)
class ExportConfig:
    """Checkpoint -> parity-gated ONNX model directory."""

    checkpoint: Path = field(metadata=opt("trainer checkpoint (save_pretrained dir + training_config.yaml)"))
    output_dir: Path = field(metadata=opt("model directory to write (replaced atomically)"))
    target: str = field(default="cpu", metadata=opt("execution provider the graph is built for", choices=TARGETS))
    quantize: str = field(
        default="auto",
        metadata=opt("weights: auto = int8 for cpu, fp16 for gpu", choices=QUANTIZATIONS),
    )
    optimize: str = field(
        default="O2",
        metadata=opt(
            "graph fusions (attention, LayerNorm, GELU) applied to the fp32 graph before quantization",
            choices=OPTIMIZATIONS,
        ),
    )
    isa: str = field(
        default="auto",
        metadata=opt("int8 preset for this CPU; auto reads /proc/cpuinfo", choices=ISAS),
    )
    per_channel: bool = field(
        default=True,
        metadata=opt("per-channel weight scales (per-tensor lost 1.9 accuracy points in the issue's measurement)"),
    )
    quantize_embeddings: bool = field(
        default=True,
        metadata=opt("int8 embedding tables too (they are half of a MiniLM's weights)"),
    )
    openvino_int8: bool = field(
        default=False,
        metadata=opt(
            "also write a static int8 OpenVINO IR (openvino_model.xml/.bin, the server's openvino engine): NNCF "
            "quantizes the fp32 export, calibrated on training reviews, and the IR passes the same parity gate "
            "(needs the openvino extra)"
        ),
    )
    openvino_preset: str = field(
        default="mixed",
        metadata=opt(
            "NNCF preset of --openvino-int8: mixed (symmetric weights, asymmetric activations) or performance "
            "(symmetric both)",
            choices=OPENVINO_PRESETS,
        ),
    )
    openvino_calibration_samples: int = field(
        default=300, metadata=opt("training reviews --openvino-int8 calibrates the activation ranges on")
    )
    eval_data: Path | None = field(
        default=None,
        metadata=opt("IMDB parquet dir for parity; default data/imdb when present, else random text"),
    )
    eval_samples: int = field(
        default=500, metadata=opt("held-out reviews compared between PyTorch and ONNX (0.5 points = 2.5 reviews)")
    )
    calibrate: bool = field(
        default=True,
        metadata=opt(
            "fit a temperature on the parity reviews' ONNX logits (labelled data only) for the server to divide "
            "logits by; --no-calibrate: serve plain softmax"
        ),
    )
    calibration_test_samples: int = field(
        default=2000,
        metadata=opt("held-out test reviews the calibration error is measured on after the fit; 0 = none"),
    )
    test_accuracy: bool = field(
        default=False,
        metadata=opt(
            "also score the int8 model on every review of the test split beside the eval data, through the "
            "server's preprocessing (export_report.json's parity block; GET /v1/model shows it)"
        ),
    )
    max_accuracy_drop: float = field(default=0.5, metadata=opt("gate: largest accuracy loss in points"))
    min_agreement: float = field(default=0.98, metadata=opt("gate: smallest PyTorch/ONNX label agreement (0..1)"))
    opset: int | None = field(default=None, metadata=opt("ONNX opset; default optimum's for the architecture"))
    threads: int = field(default=0, metadata=opt("ONNX Runtime intra-op threads for parity/latency; 0 = ORT default"))
    latency_repeats: int = field(default=10, metadata=opt("timed runs per batch size (median reported)"))
    model_name: str | None = field(default=None, metadata=opt("serving name; default the checkpoint's base_model"))
    model_version: str | None = field(default=None, metadata=opt("serving version; default a hash of model.onnx"))
    seed: int = field(default=0, metadata=opt("seed for sampling parity reviews"))
    log_level: str = field(
        default="info",
        metadata=opt(
            "progress on stderr; debug adds the trace of a failed export", choices=("debug", "info", "warning")
        ),
    )

    def __post_init__(self) -> None:
        if self.eval_samples < 1:
            raise ValueError(f"--eval-samples must be >= 1, got {self.eval_samples}")
        if self.calibration_test_samples < 0:
            raise ValueError(f"--calibration-test-samples must be >= 0, got {self.calibration_test_samples}")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise ValueError(f"--min-agreement must be in [0, 1], got {self.min_agreement}")
        if self.latency_repeats < 1:
            raise ValueError(f"--latency-repeats must be >= 1, got {self.latency_repeats}")
        if self.threads < 0:
            raise ValueError(f"--threads must be >= 0, got {self.threads}")
        if self.openvino_calibration_samples < 1:
            raise ValueError(f"--openvino-calibration-samples must be >= 1, got {self.openvino_calibration_samples}")
        if self.openvino_int8 and self.target == "gpu":
            raise ValueError("--openvino-int8 is for --target cpu (OpenVINO's engine runs on the CPU)")
        if self.target == "gpu" and self.resolved_quantization == "int8":
            raise ValueError("--quantize int8 is for --target cpu; the gpu target uses fp16 or none")
        if self.target == "cpu" and self.resolved_quantization == "fp16":
            raise ValueError("--quantize fp16 is for --target gpu (ONNX Runtime's CPU kernels are fp32/int8)")

    @property
    def resolved_quantization(self) -> str:
        if self.quantize == "auto":
            return "int8" if self.target == "cpu" else "fp16"
        return self.quantize

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


def build_parser(
    config_cls: type | None = None,
    prog: str = "exporter",
    description: str = "Checkpoint -> verified ONNX model directory.",
) -> cli.OneLineParser:
    """One `--flag` per field of the frozen dataclass `config_cls` (default ExportConfig)."""
    return cli.build_parser(config_cls or ExportConfig, prog=prog, description=description, name_errors=True)


def parse_config(argv: list[str] | None, config_cls: type | None = None, prog: str = "exporter") -> Any:
    """Parse argv into `config_cls` (default ExportConfig); bad values exit 2 with one line."""
    return cli.parse_settings(config_cls or ExportConfig, argv, prog=prog, name_errors=True)
