"""`make data` without the network: linking, a local archive over file://, checksum failures."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pandas as pd
import pytest

from trainer.__main__ import main as trainer_main
from trainer.data import load_splits
from trainer.prepare import PrepareConfig, PrepareError, prepare


def main(argv: list[str]) -> int:
    """`python -m trainer data ARGV`."""
    return trainer_main(["data", *argv])


def make_archive(path: Path, n: int = 3) -> str:
    """A tiny tarball in the official layout (plus the unsup split and a vocab file that the
    converter must skip); returns its sha256."""
    with tarfile.open(path, "w:gz") as tar:

        def add(name: str, text: str) -> None:
            data = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("aclImdb/imdb.vocab", "the\nmovie\n")
        for split in ("train", "test"):
            for sub, rating in (("pos", 9), ("neg", 2)):
                for i in reversed(range(n)):  # out of order: the converter sorts
                    add(f"aclImdb/{split}/{sub}/{i}_{rating}.txt", f"{sub} review {i} of {split}<br />é")
        add("aclImdb/train/unsup/0_0.txt", "unlabelled")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_shared(root: Path) -> Path:
    root.mkdir(parents=True)
    df = pd.DataFrame({"id": [0, 1], "rating": [2, 9], "label": [0, 1], "text": ["bad", "good"]})
    for name in ("train.parquet", "test.parquet"):
        df.to_parquet(root / name)
    return root


def test_links_the_shared_copy_and_is_idempotent(tmp_path, capsys):
    shared = make_shared(tmp_path / "shared" / "imdb")
    out = tmp_path / "repo" / "data" / "imdb"
    argv = ["--shared-dir", str(shared), "--output-dir", str(out)]
    assert main(argv) == 0
    assert out.is_symlink() and out.resolve() == shared.resolve()
    assert "linked" in capsys.readouterr().out
    assert main(argv) == 0
    assert "already links" in capsys.readouterr().out
    assert len(pd.read_parquet(out / "train.parquet")) == 2


def test_refuses_to_replace_a_real_directory_with_a_link(tmp_path, capsys):
    shared = make_shared(tmp_path / "shared")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["--shared-dir", str(shared), "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists and is not a link" in err
    assert (out / "notes.txt").exists()


def test_downloads_verifies_and_converts_a_local_archive(tmp_path, capsys):
    archive = tmp_path / "src" / "aclImdb_v1.tar.gz"
    archive.parent.mkdir()
    digest = make_archive(archive)
    out = tmp_path / "data" / "imdb"
    argv = [
        "--shared-dir",
        str(tmp_path / "missing"),
        "--output-dir",
        str(out),
        "--url",
        archive.as_uri(),
        "--sha256",
        digest,
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "no shared copy" in printed and "checksum ok" in printed
    train = pd.read_parquet(out / "train.parquet")
    assert list(train.columns) == ["id", "rating", "label", "text"]
    assert train["label"].tolist() == [0, 0, 0, 1, 1, 1]  # sorted by label, then id
    assert train["id"].tolist() == [0, 1, 2, 0, 1, 2]
    assert train["rating"].tolist() == [2, 2, 2, 9, 9, 9]
    assert train["text"].iloc[0] == "neg review 0 of train<br />é"  # raw, as the shared files
    assert (tmp_path / "data" / "downloads" / "aclImdb_v1.tar.gz").is_file()
    assert not list(out.glob(".*tmp"))
    # The converted directory is a dataset the loader reads.
    assert load_splits(out, val_fraction=0.34).sizes() == {"train": 4, "val": 2, "test": 6}
    # A second run finds the data and does nothing.
    assert main(argv) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_checksum_mismatch_discards_the_download(tmp_path, capsys):
    archive = tmp_path / "fake.tar.gz"
    make_archive(archive)
    out = tmp_path / "data" / "imdb"
    argv = ["--output-dir", str(out), "--url", archive.as_uri()]  # default: the official sha256
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "checksum mismatch" in err and "c40f74a18d3b61f9" in err
    assert not (out / "train.parquet").exists()
    assert not list((tmp_path / "data" / "downloads").glob("*"))  # nothing left to mistake for good


def test_injected_opener_failure_is_one_clear_error(tmp_path):
    def offline(url, timeout):
        raise OSError("network is unreachable")

    config = PrepareConfig(output_dir=tmp_path / "imdb", url="https://example.invalid/a.tar.gz")
    with pytest.raises(PrepareError, match=r"download failed.*network is unreachable"):
        prepare(config, opener=offline)


def test_corrupt_archive_with_matching_checksum(tmp_path, capsys):
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tarball")
    digest = hashlib.sha256(junk.read_bytes()).hexdigest()
    rc = main(["--output-dir", str(tmp_path / "imdb"), "--url", junk.as_uri(), "--sha256", digest])
    assert rc == 2
    assert "not a readable tar.gz archive" in capsys.readouterr().err


def test_unsupported_scheme(tmp_path, capsys):
    assert main(["--output-dir", str(tmp_path / "imdb"), "--url", "ftp://x/y.tar.gz"]) == 2
    assert "unsupported URL scheme" in capsys.readouterr().err
