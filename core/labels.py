"""The two classes, in the order of the model's logits. One owner: the trainer writes them into
the checkpoint's config.json (id2label), the exporter copies that file, the server reads it back."""

from __future__ import annotations

LABELS: tuple[str, ...] = ("negative", "positive")
ID2LABEL: dict[int, str] = dict(enumerate(LABELS))
LABEL2ID: dict[str, int] = {name: i for i, name in ID2LABEL.items()}
