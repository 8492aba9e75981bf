"""`python -m exporter.robustness` end to end on the tiny model: a small labelled test split written
here, the report written into a copy of the model directory, and GET /v1/model showing it."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from core.modeldir import ROBUSTNESS_FILE, ROBUSTNESS_MARKDOWN, read_model_dir
from exporter import slices
from exporter.robustness import CONTRAST_KINDS, main, read_contrast_set
from server.app import create_app
from server.config import ServerConfig

FILLER = " ".join(["the film opens slowly and the middle drags on"] * 90)  # 810 words
TEXTS = [
    (FILLER + " but a great cast, wonderful and superb in the end", 1),  # long, and a late turn
    ("A great cast and a lovely score. " * 3 + "Sadly, though, the whole thing is dull and pointless.", 0),
    ("Not good. Never funny. I didn't laugh once, and nobody in the room did either.", 0),
    ("Great direction<br /><br />great music<br /><br />" * 5 + "Highly recommended!", 1),
    ("THIS FILM IS A MASTERPIECE and you MUST see it.", 1),
    ("A waste of two hours.", 0),
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, reviews):
    rows = reviews + TEXTS
    out = tmp_path_factory.mktemp("imdb")
    frame = pd.DataFrame({"id": range(len(rows)), "text": [t for t, _ in rows], "label": [y for _, y in rows]})
    frame.to_parquet(out / "test.parquet")
    return out


@pytest.fixture
def model_dir(tmp_path, tiny_model_dir):
    out = tmp_path / "model"
    shutil.copytree(tiny_model_dir, out)
    return out


def run(model_dir, data_dir, *extra: str) -> int:
    return main(["--model-dir", str(model_dir), "--data-dir", str(data_dir), "--perturbed", "5", *extra])


EXPECTED_ROWS = (
    [s.name for s in slices.NATURAL]
    + ["typos", "upper_cased", "contrast set"]
    + [f"contrast: {kind}" for kind in CONTRAST_KINDS]
)


def test_the_report_has_every_slice_with_its_figures(model_dir, data_dir, tiny_checkpoint, capsys):
    assert run(model_dir, data_dir, "--checkpoint", str(tiny_checkpoint)) == 0
    out, err = capsys.readouterr()
    assert "robustness: onnx:" in err and "(100%)" in err and "robustness: pytorch:" in err
    report = json.loads((model_dir / ROBUSTNESS_FILE).read_text())
    markdown = (model_dir / ROBUSTNESS_MARKDOWN).read_text()
    assert out == markdown

    frame = pd.read_parquet(data_dir / "test.parquet")
    masks = slices.select(frame)
    rows = {r["name"]: r for r in report["slices"]}
    assert list(rows) == EXPECTED_ROWS
    assert report["whole"]["size"] == report["samples"] == len(frame)
    contrast = read_contrast_set()
    for name, r in rows.items():
        expected = (
            int(masks[name].sum())
            if name in masks
            else 5
            if r["group"] == "perturbation"
            else len(contrast)
            if name == "contrast set"
            else int((contrast["kind"] == name.removeprefix("contrast: ")).sum())
        )
        assert r["size"] == expected, name
        assert f"| {name} | {expected:,} |" in markdown
        for engine in ("onnx", "pytorch"):
            f = r[engine]
            assert 0 <= f["correct"] <= r["size"] and f["accuracy"] == pytest.approx(f["correct"] / r["size"])
            assert f["ci95"][0] <= f["accuracy"] <= f["ci95"][1]
            # A perturbation is compared with the same reviews unperturbed, the rest with the whole.
            whole = report["whole"][engine]["accuracy"]
            if r["group"] == "perturbation":
                assert 0 <= f["versus"] <= 1 and f"{100 * f['versus']:.1f}%" in r["note"]
            else:
                assert f["versus"] == whole
            assert f["gap_points"] == pytest.approx(100 * (f["accuracy"] - f["versus"]), abs=0.01)
            assert f["flagged"] == (f["gap_points"] < -report["flag_points"])
    # Every slice the hand-made split was written to fill holds reviews.
    assert all(rows[s.name]["size"] > 0 for s in slices.NATURAL)
    # The contrast set's kinds add up to it; every flag has its line.
    kinds = [rows[f"contrast: {k}"]["onnx"]["correct"] for k in CONTRAST_KINDS]
    assert sum(kinds) == rows["contrast set"]["onnx"]["correct"]
    flagged = [(n, e) for n, r in rows.items() for e in ("onnx", "pytorch") if r[e]["flagged"]]
    assert len(report["flags"]) == len(flagged)
    assert all(f"- {line}" in markdown for line in report["flags"])
    # Truncation: the tiny model keeps 62 word pieces, so the 810-word review loses most of its own.
    long = rows["long"]
    assert long["truncation"]["kept_mean"] == 62 and long["truncation"]["cut_share"] > 0.9
    assert long["truncated_share"] == 1.0 and "cuts" in long["note"]
    assert "lower-cases" in rows["upper_cased"]["note"]


def test_a_swapped_label_order_turns_every_hit_into_a_miss(model_dir, data_dir, tmp_path):
    """The accuracies are the graph's answers against the labels: with the model's id2label
    swapped, each row's correct count becomes its misses (the same inputs, the same batches)."""
    assert run(model_dir, data_dir) == 0
    first = json.loads((model_dir / ROBUSTNESS_FILE).read_text())
    config = json.loads((model_dir / "config.json").read_text())
    config["id2label"] = {"0": "positive", "1": "negative"}
    (model_dir / "config.json").write_text(json.dumps(config))
    assert run(model_dir, data_dir) == 0
    second = json.loads((model_dir / ROBUSTNESS_FILE).read_text())
    for a, b in zip([first["whole"], *first["slices"]], [second["whole"], *second["slices"]]):
        assert a["onnx"]["correct"] + b["onnx"]["correct"] == a["size"], a["name"]


async def test_get_v1_model_shows_the_summary(aiohttp_client, model_dir, data_dir):
    assert run(model_dir, data_dir, "--samples", "6") == 0
    report = json.loads((model_dir / ROBUSTNESS_FILE).read_text())
    client = await aiohttp_client(create_app(ServerConfig(model_dir=model_dir, intra_op_threads=1)))
    summary = (await (await client.get("/v1/model")).json())["robustness"]
    assert summary["samples"] == 6 and summary["accuracy"] == report["whole"]["onnx"]["accuracy"]
    assert summary["flag_points"] == 5.0
    assert [s["name"] for s in summary["slices"]] == EXPECTED_ROWS
    for s, r in zip(summary["slices"], report["slices"]):
        assert s == {
            "name": r["name"],
            "group": r["group"],
            "size": r["size"],
            "accuracy": r["onnx"]["accuracy"],
            "ci95": r["onnx"]["ci95"],
            "gap_points": r["onnx"]["gap_points"],
            "flagged": r["onnx"]["flagged"],
        }


BAD_REPORTS = [None, "{not json", '{"slices": 3}', '{"whole": {}, "slices": [{"onnx": 1}]}', "[]"]


@pytest.mark.parametrize("content", BAD_REPORTS)
async def test_no_or_a_malformed_report_is_null_and_the_server_starts(aiohttp_client, model_dir, content):
    if content is not None:
        (model_dir / ROBUSTNESS_FILE).write_text(content)
    client = await aiohttp_client(create_app(ServerConfig(model_dir=model_dir, intra_op_threads=1)))
    info = await (await client.get("/v1/model")).json()
    assert "robustness" in info and info["robustness"] is None


def test_odd_numbers_in_the_report_are_dropped_not_fatal(model_dir):
    whole = {"size": float("nan"), "onnx": {"accuracy": float("inf"), "ci95": [0, "x"]}}
    (model_dir / ROBUSTNESS_FILE).write_text(json.dumps({"whole": whole, "slices": [], "flag_points": True}))
    summary = read_model_dir(model_dir).robustness_summary()
    assert summary == {"samples": 0, "accuracy": None, "flag_points": None, "slices": []}


def test_a_bad_data_dir_is_one_line(model_dir, tmp_path, capsys):
    assert run(model_dir, tmp_path / "nowhere") == 2
    err = capsys.readouterr().err
    assert err == f"error: {tmp_path / 'nowhere' / 'test.parquet'}: no such file\n"
    assert not (model_dir / ROBUSTNESS_FILE).exists() and not (model_dir / ROBUSTNESS_MARKDOWN).exists()


@pytest.mark.parametrize(
    "frame,problem",
    [
        (pd.DataFrame({"review": ["x"], "label": [1]}), "missing column(s) ['text']"),
        (pd.DataFrame({"text": ["x"], "label": [2]}), "labels must be 0 (negative) or 1 (positive)"),
    ],
)
def test_a_bad_split_is_one_line(model_dir, tmp_path, capsys, frame, problem):
    frame.to_parquet(tmp_path / "test.parquet")
    assert run(model_dir, tmp_path) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and problem in err


def test_a_bad_model_dir_or_flag_is_one_line(tmp_path, data_dir, capsys):
    assert run(tmp_path / "none", data_dir) == 2
    assert capsys.readouterr().err == f"error: model directory {tmp_path / 'none'} does not exist\n"
    with pytest.raises(SystemExit) as exit_info:
        main(["--model-dir", str(tmp_path), "--typo-rate", "2"])
    assert exit_info.value.code == 2 and capsys.readouterr().err.count("\n") == 1
