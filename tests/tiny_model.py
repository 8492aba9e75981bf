"""The tiny randomly initialised checkpoint used across the tests, importable by name
(`from tiny_model import build_tiny_checkpoint`) from tests and from deploy/container_test.sh.
It is built by the lab's bench/tinymodel.py (the capacity benchmark serves it too); the
reviews the tests send are here."""

from __future__ import annotations

from bench.tinymodel import build_tiny_checkpoint, packaged_model_dir

__all__ = ["REVIEWS", "build_tiny_checkpoint", "packaged_model_dir"]

REVIEWS = [
    ("An absolute triumph. The acting was superb and the story moved me to tears.", 1),
    ("Dreadful. I walked out after forty minutes; the plot made no sense at all.", 0),
    ("A charming, funny film with a wonderful cast. I would happily watch it again.", 1),
    ("Boring, predictable and far too long. The worst film I have seen this year.", 0),
    ("Great direction, great music, great performances<br /><br />Highly recommended!", 1),
    ("The script was lazy &amp; the jokes fell flat. A waste of a good cast.", 0),
    ("I loved every minute of it: clever, warm and beautifully shot.", 1),
    ("Terrible editing, wooden dialogue and a painfully slow second half.", 0),
]
