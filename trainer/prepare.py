"""`make data`: put the IMDB dataset at `--output-dir` as train.parquet / test.parquet.

When a shared copy exists (`--shared-dir`), the output directory becomes a link to it:
nothing is copied or downloaded. Otherwise the official archive is downloaded, its
SHA-256 checked, and its labelled reviews converted to the same columns as the shared
files (id, rating, label, text), sorted by label then id.
"""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from core import cli
from core.cli import opt

ACL_IMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
# The Stanford page publishes no checksum; this SHA-256 of the 84,125,825-byte archive is
# the one TensorFlow Datasets, MLDatasets.jl and others pin (its MD5, pinned by torchtext,
# is 7c2ac02c03563afcf9b574c7e56c153a).
ACL_IMDB_SHA256 = "c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe"
SPLIT_FILES = ("train.parquet", "test.parquet")
# aclImdb/{train,test}/{pos,neg}/{id}_{rating}.txt; `unsup` and the .feat/.vocab files are skipped.
_MEMBER = re.compile(r"^(?:\./)?aclImdb/(train|test)/(pos|neg)/(\d+)_(\d+)\.txt$")
_CHUNK = 1 << 20

Opener = Callable[[str, float], io.BufferedIOBase]


class PrepareError(Exception):
    """Dataset preparation failed; the message is one line saying what and where."""


@dataclass(frozen=True)
class PrepareConfig:
    """Put the IMDB dataset in place: link a shared copy, or download and convert the archive."""

    output_dir: Path = field(
        default=Path("data/imdb"),
        metadata=opt("where train/test.parquet end up (default %(default)s)", metavar="DIR"),
    )
    shared_dir: Path | None = field(
        default=None, metadata=opt("a shared copy to link instead of downloading", metavar="DIR")
    )
    url: str = field(default=ACL_IMDB_URL, metadata=opt("archive URL (default: the official Stanford archive)"))
    sha256: str = field(default=ACL_IMDB_SHA256, metadata=opt("expected SHA-256 of the archive", metavar="HEX"))
    download_dir: Path | None = field(
        default=None, metadata=opt("where the archive is kept (default: <output-dir>/../downloads)", metavar="DIR")
    )
    timeout_s: float = field(default=60.0, metadata=opt("network timeout in seconds", metavar="SECONDS"))

    @property
    def archive_path(self) -> Path:
        folder = self.download_dir or self.output_dir.parent / "downloads"
        return folder / "aclImdb_v1.tar.gz"


def _say(message: str) -> None:
    print(f">> data: {message}", flush=True)


def has_splits(folder: Path) -> bool:
    return all((folder / name).is_file() for name in SPLIT_FILES)


def link_shared(shared_dir: Path, output_dir: Path) -> None:
    """Make `output_dir` a symlink to `shared_dir` (replacing an older link, never a directory)."""
    target = shared_dir.resolve()
    if output_dir.is_symlink():
        if output_dir.resolve() == target:
            _say(f"{output_dir} already links to {target}: nothing to do")
            return
        output_dir.unlink()
    elif output_dir.exists():
        raise PrepareError(f"{output_dir}: exists and is not a link; remove it to link {target}")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    output_dir.symlink_to(target, target_is_directory=True)
    _say(f"linked {output_dir} -> {target} (shared copy; nothing downloaded)")


def _urlopen(url: str, timeout: float) -> io.BufferedIOBase:
    return urllib.request.urlopen(url, timeout=timeout)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest: Path, sha256: str, timeout: float, opener: Opener = _urlopen) -> Path:
    """Stream `url` to `dest`, hashing as it goes; a mismatch deletes the file and raises.

    Written to `dest.part` first and renamed only once verified, so an interrupted or
    corrupt download never looks like a good archive on the next run.
    """
    if dest.is_file():
        if sha256_of(dest) == sha256:
            _say(f"using the archive already at {dest} (checksum ok)")
            return dest
        _say(f"{dest} has the wrong checksum: downloading it again")
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")
    digest = hashlib.sha256()
    _say(f"downloading {url} -> {dest}")
    try:
        with opener(url, timeout) as response, partial.open("wb") as out:
            total = int(getattr(response, "headers", {}).get("Content-Length") or 0)
            done, next_report = 0, 0.1
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if total and done / total >= next_report:
                    _say(f"  {done / 1e6:.0f} / {total / 1e6:.0f} MB")
                    next_report += 0.1
    except (urllib.error.URLError, OSError, ValueError) as exc:
        partial.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        raise PrepareError(f"{url}: download failed ({reason})") from None
    actual = digest.hexdigest()
    if actual != sha256:
        partial.unlink(missing_ok=True)
        raise PrepareError(f"{url}: checksum mismatch (expected sha256 {sha256}, got {actual}); download discarded")
    partial.replace(dest)
    _say(f"checksum ok (sha256 {actual[:16]}...)")
    return dest


def read_archive(archive: Path) -> dict[str, pd.DataFrame]:
    """The labelled splits of an aclImdb tarball, read member by member without extracting
    (the archive holds 100k small files, half of them the unused `unsup` split)."""
    rows: dict[str, list[tuple[int, int, int, str]]] = {"train": [], "test": []}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                m = _MEMBER.match(member.name)
                handle = tar.extractfile(member) if m and member.isfile() else None  # None: not a review file
                if m is None or handle is None:
                    continue
                split, sub, review_id, rating = m.groups()
                data = handle.read()
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError:
                    raise PrepareError(f"{archive}: {member.name} is not UTF-8 text") from None
                rows[split].append((int(review_id), int(rating), int(sub == "pos"), text))
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise PrepareError(f"{archive}: not a readable tar.gz archive ({exc})") from None
    frames = {}
    for split, items in rows.items():
        df = pd.DataFrame(items, columns=["id", "rating", "label", "text"])
        if df["label"].nunique() != 2:
            raise PrepareError(f"{archive}: no aclImdb/{split}/pos and neg reviews found")
        frames[split] = df.sort_values(["label", "id"], kind="stable").reset_index(drop=True)
    return frames


def convert(archive: Path, output_dir: Path) -> dict[str, int]:
    """Write train.parquet/test.parquet into `output_dir`; returns the row counts."""
    frames = read_archive(archive)
    output_dir.mkdir(parents=True, exist_ok=True)
    for split, df in frames.items():
        tmp = output_dir / f".{split}.parquet.tmp"
        df.to_parquet(tmp, index=False)
        tmp.replace(output_dir / f"{split}.parquet")  # atomic: no half-written split on disk
    return {split: len(df) for split, df in frames.items()}


def prepare(config: PrepareConfig, opener: Opener = _urlopen) -> str:
    """Link, keep or download+convert; returns what happened ("linked", "present", "downloaded")."""
    out = config.output_dir
    if config.shared_dir is not None and has_splits(config.shared_dir):
        if out.exists() and not out.is_symlink() and has_splits(out):
            _say(f"{out} already holds {' and '.join(SPLIT_FILES)}: kept (not linking {config.shared_dir})")
            return "present"
        link_shared(config.shared_dir, out)
        return "linked"
    if config.shared_dir is not None:
        _say(f"no shared copy at {config.shared_dir}: preparing {out} from the official archive")
    if has_splits(out):
        _say(f"{out} already holds {' and '.join(SPLIT_FILES)}: nothing to do")
        return "present"
    if out.is_symlink():  # a dangling link to a shared copy that went away
        out.unlink()
    if config.url.split(":", 1)[0] not in ("https", "http", "file"):
        raise PrepareError(f"{config.url}: unsupported URL scheme (use https, http or file)")
    archive = download(config.url, config.archive_path, config.sha256, config.timeout_s, opener)
    _say(f"converting {archive} -> {out}")
    counts = convert(archive, out)
    _say(f"wrote {out}/train.parquet ({counts['train']} reviews) and {out}/test.parquet ({counts['test']} reviews)")
    return "downloaded"


def command(config: PrepareConfig) -> int:
    """`python -m trainer data`: 0 in place; 2 a failed download or conversion, as one line."""
    try:
        prepare(replace(config, sha256=config.sha256.lower()))
    except PrepareError as exc:
        return cli.fail("", str(exc))
    return 0
