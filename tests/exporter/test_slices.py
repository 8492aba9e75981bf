"""The robustness report's slices on small hand-made frames, its seeded typos, its interval, and
the hand-written contrast set file."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pandas as pd
import pytest
import tomllib

from core.tokenization import clean_text
from exporter import slices
from exporter.robustness import CONTRAST_KINDS, CONTRAST_SET, read_contrast_set
from exporter.robustness_report import FLAG_POINTS, figures, wilson

REPO = Path(__file__).resolve().parents[2]


def words(n: int, word: str = "film") -> str:
    return " ".join([word] * n)


def selected(select, texts: list[str]) -> list[bool]:
    return select(pd.DataFrame({"text": texts})).tolist()


def test_short_counts_the_words_of_the_cleaned_text():
    texts = [words(30), words(31), words(30) + "<br /><br />" * 5, words(29) + " &amp; x", words(4)]
    # Tags are no words; an entity unescaped to "&" still is one.
    assert selected(slices.short, texts) == [True, False, True, False, True]


def test_long_starts_at_800_words():
    assert selected(slices.long, [words(800), words(799), words(799) + "<br />", words(799) + " end"]) == [
        True,
        False,
        False,
        True,
    ]


def test_negation_is_three_cues_per_hundred_words():
    filler = words(97)
    texts = [
        f"not {filler} never don't",  # 3 cues in 100 words
        f"not {filler} never knot",  # "knot" is no cue: 2
        "Nothing works and nobody cares.",  # 2 in 5 words
        "It isn't good.",  # n't
        f"no {words(96)} nor snow notable",  # "snow", "notable" are no cues: 2 in 100
        "It was great without a doubt, and I can’t wait.",  # curly apostrophe
    ]
    assert selected(slices.negation, texts) == [True, False, True, True, False, True]


def test_late_contrast_needs_a_late_marker_and_opposite_leans():
    good, dull = "a great cast and a wonderful score", "dull and pointless"
    filler = words(20, "scene")
    texts = [
        f"{good} {filler} but {dull}",  # late, positive then negative: a turn
        f"{good} but {filler} {dull}",  # the marker is early
        f"{good} {filler} but superb",  # late, both sides positive
        f"{filler} {filler} however boring",  # no lean before it
        f"Boring, predictable {filler} yet I loved it",  # negative then positive
        f"{good} {filler} But, however, {dull}",  # the last marker counts, capitals too
        f"{good} {filler} butter {dull}",  # "butter" is no marker
    ]
    assert selected(slices.late_contrast, texts) == [True, False, False, False, True, True, False]


def test_html_heavy_counts_tags_as_written():
    assert selected(
        slices.html_heavy,
        ["a<br /><br />b" * 5, "a<br /><br />b" * 4 + "<br/>", "<i>x</i>" * 5, "3 < 4 " * 12, "plain"],
    ) == [True, False, True, False, False]


def test_capitals_is_a_tenth_of_the_words_of_three_letters_and_at_least_three():
    texts = [
        "THIS FILM WAS fine enough for me",  # 3 of 7 words
        "GREAT FILM overall " + words(8),  # 2: under the minimum
        "THE BIG SHOW " + words(30),  # 3 of 33: under 10%
        "I SAW it on TV OK " + words(3),  # words of 1-2 letters never count
        "BAD BAD BAD " + words(27),  # 3 of 30: exactly 10%
    ]
    assert selected(slices.capitals, texts) == [True, False, False, False, True]


def test_select_gives_every_natural_slice_a_mask_of_the_frame():
    frame = pd.DataFrame({"text": ["Not bad.", words(900), "A<br />" * 12]}, index=[7, 8, 9])
    masks = slices.select(frame)
    assert list(masks) == [s.name for s in slices.NATURAL]
    assert all(m.dtype == bool and list(m.index) == [7, 8, 9] for m in masks.values())
    assert masks["short"].tolist() == [True, False, True] and masks["long"].tolist() == [False, True, False]
    assert all(s.definition for s in slices.NATURAL)


REVIEW = (
    "The first hour is clever and tense, with a lead who holds every scene. Then the script loses its "
    "nerve: subplots pile up, the villain explains himself twice and the finale drags on for ages. "
) * 5


def one_edit_apart(a: str, b: str) -> bool:
    """b is a with two neighbours swapped, one letter dropped or one inserted."""
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]]
    short, long = sorted((a, b), key=len)
    return len(long) == len(short) + 1 and any(long[:i] + long[i + 1 :] == short for i in range(len(long)))


@pytest.mark.parametrize("rate", [0.05, 0.1, 0.3])
def test_typos_change_the_asked_share_of_words_one_edit_each(rate):
    out = slices.typos(REVIEW, rate, seed=3)
    before, after = clean_text(REVIEW).split(" "), out.split(" ")
    assert len(before) == len(after)  # edits never add or remove spaces
    eligible = len(re.findall(r"[A-Za-z]{3,}", REVIEW))
    changed = [(a, b) for a, b in zip(before, after) if a != b]
    assert len(changed) == round(rate * eligible)  # one word per token here: no token has two
    assert all(one_edit_apart(a, b) for a, b in changed), changed


def test_typos_are_seeded_and_use_every_edit():
    assert slices.typos(REVIEW, 0.1, seed=0) == slices.typos(REVIEW, 0.1, seed=0)
    assert slices.typos(REVIEW, 0.1, seed=0) != slices.typos(REVIEW, 0.1, seed=1)
    before = clean_text(REVIEW).split(" ")
    kinds = set()
    for seed in range(5):
        for a, b in zip(before, slices.typos(REVIEW, 0.1, seed=seed).split(" ")):
            if a != b:
                kinds.add({0: "swap", -1: "drop", 1: "insert"}[len(b) - len(a)])
    assert kinds == {"swap", "drop", "insert"}


def test_typos_work_on_the_cleaned_text_and_keep_short_words():
    assert slices.typos("Good<br />fun &amp; games", 0.5, seed=0).count("<") == 0
    assert slices.typos("a b c it is OK", 0.5) == "a b c it is OK"  # nothing of 3+ letters
    once = slices.typos("wonderful", 0.01)  # at least one word gets its typo
    assert once != "wonderful" and one_edit_apart("wonderful", once)


def test_upper_is_the_cleaned_review_in_capitals():
    assert slices.upper("Not bad<br />at &amp; all") == "NOT BAD AT & ALL"


def test_wilson_interval():
    lo, hi = wilson(5, 10)
    assert (lo, hi) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(10, 10)[1] == pytest.approx(1.0) and wilson(10, 10)[0] == pytest.approx(0.7225, abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)


def test_a_row_is_flagged_past_five_points_below():
    hits = [True] * 80 + [False] * 20  # 80%
    assert figures(pd.Series(hits).to_numpy(), whole=0.85)["flagged"] is False  # exactly 5 below
    flagged = figures(pd.Series(hits).to_numpy(), whole=0.8501)
    assert flagged["flagged"] is True and flagged["gap_points"] == pytest.approx(-FLAG_POINTS - 0.01)
    empty = figures(pd.Series([], dtype=bool).to_numpy(), whole=0.9)
    assert empty["accuracy"] is None and empty["flagged"] is False


def test_the_contrast_set_file_is_well_formed():
    with CONTRAST_SET.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = list(reader)
    assert header == ["text", "label", "kind"]
    assert len(rows) >= 60 and all(len(r) == 3 for r in rows)
    assert {r[1] for r in rows} == {"negative", "positive"}
    assert {r[2] for r in rows} == set(CONTRAST_KINDS)  # every kind present, no other
    for kind in CONTRAST_KINDS:  # each kind has both verdicts: a kind is not a label
        assert {r[1] for r in rows if r[2] == kind} == {"negative", "positive"}, kind
    normalised = [" ".join(r[0].lower().split()) for r in rows]
    assert len(set(normalised)) == len(rows), "duplicate texts"
    assert all(5 <= len(r[0].split()) <= 40 for r in rows), "short reviews"
    assert len(read_contrast_set()) == len(rows)


def test_the_contrast_set_ships_with_the_package():
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert CONTRAST_SET.name in data["exporter"] and CONTRAST_SET.parent == REPO / "exporter"
