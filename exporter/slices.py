"""The robustness report's slices of a test set: each a pure, documented definition.

A natural slice is a boolean mask over a frame with a `text` column (the review as written),
computed on the review as the server sees it (core.tokenization.clean_text: HTML tags to spaces,
entities unescaped) unless its definition says otherwise. A perturbation rewrites reviews (seeded
typos, upper case) so that the same reviews can be scored before and after. The thresholds were
set on IMDB's test split so that no slice is empty in a sample of a few thousand reviews (counts
in the 25,000 test reviews are in each docstring).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd

from core.tokenization import clean_text

SHORT_WORDS = 30
LONG_WORDS = 800
NEGATION_PER_100_WORDS = 3.0
HTML_TAGS = 10
CAPS_SHARE = 0.10
CAPS_MIN_WORDS = 3
LATE_SHARE = 2 / 3  # "late": in the last third of the review's words
TYPO_RATE = 0.10

# What clean_text removes: any tag, `<br />` included (core/tokenization.py's _BR and _TAG).
_TAG = re.compile(r"<[^>]{0,200}>")
# Negation cues, on the lower-cased cleaned text; n't covers don't, isn't, can't, won't...
_NEGATION = re.compile(
    r"\b(?:not|no|never|nothing|nobody|none|neither|nor|nowhere|without|cannot)\b|n['’]t\b", re.IGNORECASE
)
_WORD = re.compile(r"[a-z']+")  # words of the lower-cased text, for positions and polarity
_LETTERS3 = re.compile(r"[A-Za-z]{3,}")  # the words caps and typos look at: 3+ ASCII letters
CONTRAST_MARKERS = frozenset({"but", "however", "yet", "although", "though", "nevertheless", "nonetheless"})
# A small polarity lexicon, only to tell which way each side of a contrast leans; the label is
# the review's verdict, the lexicon never decides it.
POSITIVE_WORDS = frozenset(
    "good great excellent wonderful best love loved brilliant superb enjoyable enjoyed beautiful amazing fantastic "
    "perfect fun favorite favourite masterpiece recommend recommended worth incredible outstanding delightful "
    "touching moving charming funny hilarious impressive gem solid".split()
)
NEGATIVE_WORDS = frozenset(
    "bad worst awful terrible boring waste wasted poor horrible stupid dull lame mess disappointing disappointed "
    "disappointment pointless annoying ridiculous weak mediocre fails failed unfunny tedious pathetic garbage "
    "crap avoid forgettable predictable".split()
)


def cleaned(frame: pd.DataFrame) -> pd.Series:
    """The cleaned texts: the frame's `clean` column when the caller computed it once, else now."""
    if "clean" in frame.columns:
        return frame["clean"]
    return frame["text"].map(clean_text)


def word_count(text: str) -> int:
    """Whitespace-separated words (of a cleaned text: tags are gone, so `<br />` is no word)."""
    return len(text.split())


def short(frame: pd.DataFrame) -> pd.Series:
    """At most 30 words (69 of IMDB's 25,000 test reviews; the shortest has 4)."""
    return cleaned(frame).map(word_count) <= SHORT_WORDS


def long(frame: pd.DataFrame) -> pd.Series:
    """At least 800 words (403 test reviews): far past what truncation keeps, so the report
    says how much of them the model never sees."""
    return cleaned(frame).map(word_count) >= LONG_WORDS


def negation_cues(text: str) -> int:
    return len(_NEGATION.findall(text))


def negation(frame: pd.DataFrame) -> pd.Series:
    """At least 3 negation cues (not, no, never, n't, nothing, nobody, none, neither, nor, nowhere,
    without, cannot) per 100 words. 89% of test reviews hold at least one, so "has a negation"
    would be the whole set; this density holds 14% of them."""
    clean = cleaned(frame)
    return 100 * clean.map(negation_cues) >= NEGATION_PER_100_WORDS * clean.map(word_count).clip(lower=1)


def lean(words: Sequence[str]) -> int:
    """Positive minus negative lexicon words: the sign is which way a stretch of text leans."""
    return sum(w in POSITIVE_WORDS for w in words) - sum(w in NEGATIVE_WORDS for w in words)


def late_turn(text: str) -> bool:
    """The last contrast marker (but, however, yet, although, though, nevertheless, nonetheless)
    lies in the last third of the words, and the text before it and the text after it lean opposite
    ways by the lexicon: "great cast, lovely score ... but a dull, pointless film"."""
    words = _WORD.findall(text.lower())
    marks = [i for i, w in enumerate(words) if w in CONTRAST_MARKERS]
    if not marks or marks[-1] < LATE_SHARE * len(words):
        return False
    return lean(words[: marks[-1]]) * lean(words[marks[-1] + 1 :]) < 0


def late_contrast(frame: pd.DataFrame) -> pd.Series:
    """A contrast late in the review that turns its lean (`late_turn`; 1,192 test reviews, 78%
    negative). The label cannot say whether the turn is the verdict; the lexicon's lean says the
    two sides disagree, so the model must weigh the end against the rest."""
    return cleaned(frame).map(late_turn)


def html_tags(text: str) -> int:
    return len(_TAG.findall(text))


def html_heavy(frame: pd.DataFrame) -> pd.Series:
    """At least 10 HTML tags in the review as written (3,427 test reviews). IMDB's tags are
    nearly all `<br />` line breaks: cleaning turns them into spaces, so this is the slice of
    many-paragraph reviews, and it checks that what cleaning leaves reads as well as the rest."""
    return frame["text"].map(html_tags) >= HTML_TAGS


def caps_share(text: str) -> tuple[int, float]:
    """(words of 3+ letters written all in capitals, their share of the words of 3+ letters)."""
    words = _LETTERS3.findall(text)
    upper = sum(w.isupper() for w in words)
    return upper, upper / len(words) if words else 0.0


def capitals(frame: pd.DataFrame) -> pd.Series:
    """At least 10% of the words of 3+ letters (and at least 3 of them) all in capitals: shouting,
    and titles written in caps (125 test reviews; only 2 have 30% of their letters upper-case).
    An uncased tokenizer lower-cases them: see the upper-cased perturbation."""
    shares = cleaned(frame).map(caps_share)
    return shares.map(lambda s: s[0] >= CAPS_MIN_WORDS and s[1] >= CAPS_SHARE)


@dataclass(frozen=True)
class Slice:
    name: str
    select: Callable[[pd.DataFrame], pd.Series]
    definition: str  # one line for the report; the function's docstring has the reasons


NATURAL = (
    Slice("short", short, f"at most {SHORT_WORDS} words"),
    Slice("long", long, f"at least {LONG_WORDS} words"),
    Slice(
        "negation",
        negation,
        f"at least {NEGATION_PER_100_WORDS:g} negation cues (not, no, never, n't...) per 100 words",
    ),
    Slice(
        "late_contrast",
        late_contrast,
        "the last but/however/yet/although/though is in the last third, and the text before it and after it "
        "lean opposite ways (a polarity lexicon)",
    ),
    Slice("html_heavy", html_heavy, f"at least {HTML_TAGS} HTML tags (nearly all `<br />`) as written"),
    Slice(
        "capitals",
        capitals,
        f"at least {CAPS_SHARE:.0%} (and {CAPS_MIN_WORDS}) of the words of 3+ letters all in capitals",
    ),
)


def select(frame: pd.DataFrame) -> dict[str, pd.Series]:
    """Every natural slice's mask over `frame` (cleaning each text once)."""
    frame = frame if "clean" in frame.columns else frame.assign(clean=frame["text"].map(clean_text))
    return {s.name: s.select(frame).astype(bool) for s in NATURAL}


# ---------------------------------------------------------------------------- perturbations


def _edit(word: str, rng: random.Random) -> str:
    """One character-level typo in a word of 3+ letters: swap two neighbouring letters that
    differ, drop a letter or insert one (lower-case, at any position); always a different word."""
    op = rng.choice(("swap", "drop", "insert"))
    if op == "swap":
        spots = [i for i in range(len(word) - 1) if word[i] != word[i + 1]]
        if spots:
            i = rng.choice(spots)
            return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
        op = "drop"  # "zzz": no swap changes it
    if op == "drop":
        i = rng.randrange(len(word))
        return word[:i] + word[i + 1 :]
    i = rng.randrange(len(word) + 1)
    return word[:i] + rng.choice("abcdefghijklmnopqrstuvwxyz") + word[i:]


def typos(text: str, rate: float = TYPO_RATE, seed: int = 0) -> str:
    """The cleaned review with round(rate x its words of 3+ letters) of those words (at least one)
    given one typo each (`_edit`). Seeded by `seed` and the text itself: a review gets the same
    typos every run, whatever else is in the sample."""
    clean = clean_text(text)
    words = list(_LETTERS3.finditer(clean))
    if not words or rate <= 0:
        return clean
    rng = random.Random(f"{seed}\x00{clean}")  # str seeds hash with SHA-512: stable across runs
    chosen = sorted(rng.sample(range(len(words)), max(1, min(len(words), round(rate * len(words))))))
    out, last = [], 0
    for k in chosen:
        match = words[k]
        out += [clean[last : match.start()], _edit(match.group(), rng)]
        last = match.end()
    return "".join(out) + clean[last:]


def upper(text: str) -> str:
    """The cleaned review in capitals: an uncased tokenizer (BERT's lower-cases) gives it the same ids."""
    return clean_text(text).upper()
