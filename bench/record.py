"""What the two benchmark reports share: a figure as text, and the JSON record beside the Markdown."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def fmt(value: Any, spec: str = ".1f", unit: str = "") -> str:
    """`value` in format `spec` with `unit`; "n/a" for a figure that was not measured (None)."""
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def write_json(out_dir: Path, name: str, results: dict[str, Any]) -> Path:
    """`results` as <out_dir>/<name> (the folder made if needed); the path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return path
