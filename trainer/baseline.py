"""`python -m trainer baseline`: TF-IDF + logistic regression, the bar every transformer must clear.

It fits on the same train split the transformer trains on (validation held out, same seed)
and writes the same metrics.json layout through trainer.metrics, so the numbers compare
like for like.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core import cli
from core.cli import opt
from trainer.data import DataError, load_splits
from trainer.metrics import classification_metrics, save_plots

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BaselineConfig:
    """TF-IDF + logistic regression, the bar every transformer must clear."""

    data_dir: Path = field(
        default=Path("data/imdb"), metadata=opt("dataset directory or CSV (default %(default)s)", metavar="DIR")
    )
    output_dir: Path = field(
        default=Path("artifacts/baseline"),
        metadata=opt("where metrics.json and plots go (default %(default)s)", metavar="DIR"),
    )
    val_fraction: float = field(
        default=0.1, metadata=opt("share of the train split held out for validation (as in train)")
    )
    seed: int = field(default=42, metadata=opt("split and solver seed"))
    max_train_samples: int | None = field(default=None, metadata=opt("cap on train reviews (stratified sample)"))
    max_eval_samples: int | None = field(default=None, metadata=opt("cap on validation and test reviews"))
    # Drops typos and names seen in fewer than 5 reviews: smaller, less noisy vocabulary.
    min_df: int = field(default=5, metadata=opt("ignore n-grams in fewer reviews than this"))
    C: float = field(default=1.0, metadata=opt("inverse regularisation strength"))


def build_pipeline(config: BaselineConfig):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    return Pipeline(
        [
            (
                "tfidf",
                TfidfVectorizer(min_df=config.min_df, ngram_range=(1, 2), stop_words="english", sublinear_tf=True),
            ),
            ("logreg", LogisticRegression(solver="liblinear", C=config.C, random_state=config.seed)),
        ]
    )


def top_features(pipeline, k: int = 15) -> dict[str, list[str]]:
    """The n-grams with the largest positive and negative weights: a sanity check that the
    model learned sentiment words, not artefacts."""
    names = pipeline.named_steps["tfidf"].get_feature_names_out()
    weights = pipeline.named_steps["logreg"].coef_[0]
    order = np.argsort(weights)
    return {"positive": [str(names[i]) for i in order[::-1][:k]], "negative": [str(names[i]) for i in order[:k]]}


def run(config: BaselineConfig) -> dict:
    splits = load_splits(
        config.data_dir,
        val_fraction=config.val_fraction,
        seed=config.seed,
        max_train_samples=config.max_train_samples,
        max_eval_samples=config.max_eval_samples,
    )
    log.info("data %s (%s): %s", config.data_dir, splits.source, splits.sizes())
    pipeline = build_pipeline(config)
    start = time.perf_counter()
    pipeline.fit(splits.train["text"], splits.train["label"])
    train_time = time.perf_counter() - start
    result: dict = {
        "model": "tfidf+logreg",
        "params": {
            "min_df": config.min_df,
            "ngram_range": [1, 2],
            "stop_words": "english",
            "sublinear_tf": True,
            "solver": "liblinear",
            "C": config.C,
        },
        "features": len(pipeline.named_steps["tfidf"].vocabulary_),
        "train_samples": len(splits.train),
        "train_time_s": round(train_time, 3),
        "data_dir": str(config.data_dir),
        "data_source": splits.source,
        "seed": config.seed,
    }
    for name, df in (("validation", splits.val), ("test", splits.test)):
        probs = pipeline.predict_proba(df["text"])[:, 1]
        eps = 1e-12  # log loss of the predicted probabilities, comparable to the transformer's CE loss
        labels = df["label"].to_numpy()
        loss = float(-np.mean(labels * np.log(probs + eps) + (1 - labels) * np.log(1 - probs + eps)))
        result[name] = classification_metrics(labels, probs, loss=loss)
        if name == "test":
            test_labels, test_probs = labels, probs
    result["top_features"] = top_features(pipeline)
    out = config.output_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    save_plots(out, None, test_labels, test_probs)
    log.info(
        "test accuracy %.4f, macro F1 %.4f (%d reviews); train %.1fs; wrote %s",
        result["test"]["accuracy"],
        result["test"]["f1_macro"],
        result["test"]["samples"],
        train_time,
        out,
    )
    return result


def command(config: BaselineConfig) -> int:
    """`python -m trainer baseline`: 0 fitted; 2 bad data or settings, as one line."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        result = run(config)
    except DataError as exc:
        return cli.fail("", str(exc))
    except ValueError as exc:  # e.g. bad --val-fraction, or an empty vocabulary after min_df
        return cli.fail("", str(exc).splitlines()[0])
    print(json.dumps({k: round(result["test"][k], 4) for k in ("accuracy", "f1_macro")}))
    return 0
