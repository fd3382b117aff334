"""The data module on the real UCI data: download, parsing, balancing, splits, tokens, padding."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers.local_internet import LocalInternet

from spam_lightning.data.modules import SmsSpamDataModule
from spam_lightning.data.preprocess import get_tokenizer, tokenizer_path
from spam_lightning.data.sms_spam import TSV_NAME, ZIP_NAME, extract_tsv, parse_sms_collection, splits_dir
from spam_lightning.errors import DataError, DownloadError


@pytest.fixture(scope="module")
def server(sms_zip: Path, tokenizer_file: str) -> Iterator[str]:
    """/good.zip: the real zip; /truncated.zip: announces the full size, sends half; /tampered.zip: one byte off;
    /r50k_base.tiktoken: GPT-2's ranks file."""
    with LocalInternet() as internet:
        for name in ("good", "truncated", "tampered"):
            internet.add_file(f"/{name}.zip", sms_zip)
        internet.truncate("/truncated.zip", sms_zip.stat().st_size // 2)
        internet.corrupt("/tampered.zip")
        internet.add_file("/r50k_base.tiktoken", tokenizer_file)
        yield internet.endpoint


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, sms_zip: Path, tokenizer_file: str) -> SmsSpamDataModule:
    dm = SmsSpamDataModule(
        source=str(sms_zip), data_dir=str(tmp_path_factory.mktemp("data")), tokenizer_file=tokenizer_file
    )
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    return dm


def _trusted_files(data_dir: Path) -> list[str]:
    """Files a later run would pick up (temporary files start with a dot), as paths relative to data_dir."""
    return sorted(p.relative_to(data_dir).as_posix() for p in data_dir.rglob("*") if not p.name.startswith("."))


SPLIT_FILES = ["seed-123", "seed-123/splits.json", "seed-123/test.csv", "seed-123/train.csv", "seed-123/validation.csv"]


# -- download -------------------------------------------------------------------------------


def test_download_from_local_http_server(server: str, tmp_path: Path, tokenizer_file: str) -> None:
    dm = SmsSpamDataModule(data_dir=str(tmp_path), tokenizer_file=tokenizer_file, urls=[f"{server}/good.zip"])
    dm.prepare_data()
    assert (tmp_path / ZIP_NAME).is_file()
    assert _trusted_files(tmp_path) == sorted([ZIP_NAME, TSV_NAME, *SPLIT_FILES])
    # A verified copy in data_dir is used as is: no server needed the second time.
    before = (tmp_path / "seed-123" / "train.csv").stat().st_mtime_ns
    SmsSpamDataModule(
        data_dir=str(tmp_path), tokenizer_file=tokenizer_file, urls=["http://127.0.0.1:9/x"]
    ).prepare_data()
    assert (tmp_path / "seed-123" / "train.csv").stat().st_mtime_ns == before


@pytest.mark.parametrize(
    ("path", "cause"),
    [("/tampered.zip", "SHA256"), ("/truncated.zip", "IncompleteRead"), ("/missing.zip", "404")],
)
def test_failed_download_leaves_nothing(server: str, tmp_path: Path, path: str, cause: str) -> None:
    dm = SmsSpamDataModule(data_dir=str(tmp_path), urls=[server + path])
    with pytest.raises(DownloadError, match="could not download") as err:
        dm.prepare_data()
    assert cause.lower() in str(err.value).lower()
    assert "data.source=" in str(err.value)  # says how to run offline
    assert "\n" not in str(err.value)
    assert _trusted_files(tmp_path) == []


def test_backup_url_used_when_first_fails(server: str, tmp_path: Path, tokenizer_file: str) -> None:
    dm = SmsSpamDataModule(
        data_dir=str(tmp_path), tokenizer_file=tokenizer_file, urls=[f"{server}/missing.zip", f"{server}/good.zip"]
    )
    dm.prepare_data()
    assert (tmp_path / "seed-123" / "train.csv").is_file()


def test_url_source(server: str, tmp_path: Path, tokenizer_file: str) -> None:
    dm = SmsSpamDataModule(source=f"{server}/good.zip", data_dir=str(tmp_path), tokenizer_file=tokenizer_file)
    dm.prepare_data()
    assert (tmp_path / "seed-123" / "test.csv").is_file()


# -- local sources and checksums ---------------------------------------------------------------


def test_extracted_file_as_source(tmp_path: Path, sms_tsv: Path, tokenizer_file: str, prepared) -> None:
    dm = SmsSpamDataModule(source=str(sms_tsv), data_dir=str(tmp_path), tokenizer_file=tokenizer_file)
    dm.prepare_data()
    for name in ("train", "validation", "test"):
        assert (dm.splits_dir / f"{name}.csv").read_bytes() == (prepared.splits_dir / f"{name}.csv").read_bytes()


def test_wrong_checksum_of_local_zip(tmp_path: Path, sms_zip: Path) -> None:
    bad = tmp_path / "copy.zip"
    data = bytearray(sms_zip.read_bytes())
    data[100] ^= 0xFF
    bad.write_bytes(bytes(data))
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"copy\.zip: sha256 is .* expected 1587ea43"):
        SmsSpamDataModule(source=str(bad), data_dir=str(out)).prepare_data()
    assert not list(out.rglob("*.csv"))


def test_corrupt_zip_is_a_clear_error(tmp_path: Path, sms_zip: Path) -> None:
    bad = tmp_path / "truncated.zip"
    bad.write_bytes(sms_zip.read_bytes()[:5000])
    with pytest.raises(DataError, match=r"truncated\.zip: not a valid zip archive"):
        extract_tsv(bad, tmp_path / TSV_NAME, verify=True)
    assert not (tmp_path / TSV_NAME).exists()


def test_tokenizer_download_failure_says_how_to_run_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPAM_LIGHTNING_CACHE", str(tmp_path))
    with pytest.raises(
        RuntimeError, match=r"could not download GPT-2's BPE vocabulary .* data\.tokenizer_file="
    ) as err:
        tokenizer_path(None, url="http://127.0.0.1:9/r50k_base.tiktoken")
    assert isinstance(err.value, DownloadError) and "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_tokenizer_downloaded_once_into_the_cache(
    server: str, tmp_path: Path, tokenizer_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPAM_LIGHTNING_CACHE", str(tmp_path))
    url = f"{server}/r50k_base.tiktoken"
    assert tokenizer_path(None, url) == tmp_path / "gpt2.tiktoken"
    assert (tmp_path / "gpt2.tiktoken").read_bytes() == Path(tokenizer_file).read_bytes()
    # Later calls find the verified copy without the server; a corrupt copy is fetched again.
    assert tokenizer_path(None, "http://127.0.0.1:9/gone") == tmp_path / "gpt2.tiktoken"
    (tmp_path / "gpt2.tiktoken").write_bytes(b"corrupt")
    assert tokenizer_path(None, url).read_bytes() == Path(tokenizer_file).read_bytes()


def test_tokenizer_file_is_kept_for_later_runs(
    tmp_path: Path, tokenizer_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offline, data.tokenizer_file is needed once: the verified file is copied into the cache."""
    monkeypatch.setenv("SPAM_LIGHTNING_CACHE", str(tmp_path / "cache"))
    assert tokenizer_path(tokenizer_file) == Path(tokenizer_file)
    offline = "http://127.0.0.1:9/unreachable"
    assert tokenizer_path(None, offline).read_bytes() == Path(tokenizer_file).read_bytes()
    get_tokenizer.cache_clear()
    assert get_tokenizer(None, offline).encode("Hello, world!") == [15496, 11, 995, 0]


def test_tokenizer_hash_checked(tmp_path: Path, tokenizer_file: str) -> None:
    assert get_tokenizer(tokenizer_file).encode("Hello, world!") == [15496, 11, 995, 0]
    bad = tmp_path / "gpt2.tiktoken"
    shutil.copy(tokenizer_file, bad)
    with bad.open("ab") as f:
        f.write(b"x")
    with pytest.raises(ValueError, match=r"gpt2\.tiktoken' has sha256 .* expected GPT-2's 306cd27f"):
        get_tokenizer(str(bad))


# -- parsing ------------------------------------------------------------------------------------


def test_parse_counts(sms_tsv: Path) -> None:
    df = parse_sms_collection(sms_tsv)
    assert len(df) == 5574
    assert (df.label == 0).sum() == 4827
    assert (df.label == 1).sum() == 747
    # Messages that start with a double quote stay intact (pandas' default quoting merges them).
    assert df.text.str.startswith('"').sum() == 54


def test_crlf_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "f.tsv"
    path.write_bytes(b'\xef\xbb\xbfham\tHello "there\r\nspam\tWIN\tnow\r\n')
    df = parse_sms_collection(path)
    assert df.label.tolist() == [0, 1]
    assert df.text.tolist() == ['Hello "there', "WIN\tnow"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"ham\tok\nspam no tab here\n", r"f\.tsv, line 2: expected 'label<TAB>text', found no tab"),
        (b"ham\tok\nham\tok\neggs\tsome text\n", r"f\.tsv, line 3: unknown label 'eggs'"),
        (b"ham\tok\nspam\t  \n", r"f\.tsv, line 2: empty text"),
        (b"ham\tok\nham\tbad \xff byte\n", r"f\.tsv, line 2: invalid UTF-8"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "f.tsv"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        parse_sms_collection(path)


def test_one_class_and_too_few_rows(tmp_path: Path) -> None:
    one_class = tmp_path / "ham.tsv"
    one_class.write_bytes(b"ham\ta\nham\tb\n" * 20)
    dm = SmsSpamDataModule(source=str(one_class), data_dir=str(tmp_path / "a"), verify_checksum=False)
    with pytest.raises(DataError, match="only one class"):
        dm.prepare_data()
    few = tmp_path / "few.tsv"
    few.write_bytes(b"ham\ta\nspam\tb\nham\tc\n")
    dm = SmsSpamDataModule(source=str(few), data_dir=str(tmp_path / "b"), verify_checksum=False)
    with pytest.raises(DataError, match="too few"):
        dm.prepare_data()
    assert not list((tmp_path / "b").rglob("*.csv"))


# -- balancing, splits, determinism -----------------------------------------------------------


def test_split_sizes_and_classes(prepared: SmsSpamDataModule) -> None:
    sizes = {name: len(prepared.read_split(name)) for name in ("train", "validation", "test")}
    assert sizes == {"train": 1045, "validation": 149, "test": 300}
    frames = [prepared.read_split(name) for name in sizes]
    assert sum(int(f.label.sum()) for f in frames) == 747  # every spam message, once
    assert sum(len(f) - int(f.label.sum()) for f in frames) == 747  # undersampled ham
    assert all(set(f.label) == {0, 1} for f in frames)


def test_same_seed_same_bytes_other_seed_differs(
    prepared: SmsSpamDataModule, tmp_path: Path, sms_zip: Path, tokenizer_file: str
) -> None:
    def digests(dm: SmsSpamDataModule) -> list[str]:
        return [hashlib.sha256((dm.splits_dir / f"{s}.csv").read_bytes()).hexdigest() for s in ("train", "test")]

    again = SmsSpamDataModule(source=str(sms_zip), data_dir=str(tmp_path / "same"), tokenizer_file=tokenizer_file)
    again.prepare_data()
    assert digests(again) == digests(prepared)
    other = SmsSpamDataModule(
        source=str(sms_zip), data_dir=str(tmp_path / "other"), tokenizer_file=tokenizer_file, seed=7
    )
    other.prepare_data()
    assert other.splits_dir == tmp_path / "other" / "seed-7"
    assert digests(other) != digests(prepared)


def test_splits_of_each_seed_in_their_folder_edited_file_rebuilt(
    tmp_path: Path, sms_zip: Path, tokenizer_file: str
) -> None:
    def prepare(seed: int = 123) -> bytes:
        SmsSpamDataModule(
            source=str(sms_zip), data_dir=str(tmp_path), tokenizer_file=tokenizer_file, seed=seed
        ).prepare_data()
        return (splits_dir(tmp_path, seed) / "train.csv").read_bytes()

    def mtimes(seed: int = 123) -> dict[str, int]:
        return {p.name: p.stat().st_mtime_ns for p in splits_dir(tmp_path, seed).iterdir()}

    first = prepare()
    before = mtimes()
    assert prepare(seed=1) != first
    assert mtimes() == before  # another seed writes into its own folder only
    assert prepare() == first
    assert mtimes() == before  # current splits are not written again
    (tmp_path / "seed-123" / "train.csv").write_text("label,text\n0,edited\n")
    assert prepare() == first
    changed = {name for name, mtime in mtimes().items() if mtime != before[name]}
    assert changed == {"train.csv"}  # only the file whose bytes differ is written


# -- tokens and padding ----------------------------------------------------------------------------


def test_longest_train_padding_is_120(prepared: SmsSpamDataModule) -> None:
    assert prepared.pad_length == 120
    for loader in (prepared.train_dataloader(), prepared.val_dataloader(), prepared.test_dataloader()):
        batch = next(iter(loader))
        assert batch["input_ids"].shape[1] == 120
        assert batch["input_ids"].dtype == torch.long
        for row, length in zip(batch["input_ids"], batch["lengths"], strict=True):
            assert (row[length:] == 50256).all()
    assert len(prepared.train_dataloader()) == 1045 // 8  # drop_last, as in the book
    assert len(prepared.val_dataloader()) == 19
    assert max(len(ids) for ids in prepared.datasets["test"].ids) <= 120


@pytest.mark.parametrize(("padding", "max_length"), [(64, None), ("batch", None), ("longest_train", 32)])
def test_other_padding_modes(prepared: SmsSpamDataModule, padding: str | int, max_length: int | None) -> None:
    dm = SmsSpamDataModule(
        data_dir=str(prepared.data_dir),
        tokenizer_file=prepared.tokenizer_file,
        padding=padding,
        max_length=max_length,
        batch_size=16,
    )
    dm.prepare_data()
    dm.setup("fit")
    widths = set()
    for batch in dm.val_dataloader():
        widths.add(batch["input_ids"].shape[1])
        assert int(batch["lengths"].max()) <= batch["input_ids"].shape[1]
        if padding == "batch":
            assert int(batch["lengths"].max()) == batch["input_ids"].shape[1]
    if padding == "batch":
        assert len(widths) > 1
    else:
        assert widths == {64 if padding == 64 else 32}


def test_texts_never_longer_than_context(prepared: SmsSpamDataModule) -> None:
    dm = SmsSpamDataModule(data_dir=str(prepared.data_dir), tokenizer_file=prepared.tokenizer_file, context_length=50)
    dm.setup("fit")
    assert dm.pad_length == 50
    assert max(len(i) for i in dm.datasets["train"].ids) == 50


@pytest.mark.parametrize(
    "kwargs",
    [{"padding": "nope"}, {"padding": 0}, {"batch_size": 0}, {"max_length": 2000}, {"padding": 4096}],
)
def test_invalid_config(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=r"data\.(padding|batch_size|max_length)"):
        SmsSpamDataModule(**kwargs)


def test_training_order_depends_on_seed_and_epoch(prepared: SmsSpamDataModule) -> None:
    loader = prepared.train_dataloader()

    def first_labels(epoch: int) -> list[int]:
        loader.batch_sampler.sampler.set_epoch(epoch)
        return next(iter(loader))["input_ids"][:, :5].flatten().tolist()

    assert first_labels(0) == first_labels(0)
    assert first_labels(0) != first_labels(1)


def test_zip_extraction_takes_only_the_expected_member(tmp_path: Path, sms_tsv: Path, tokenizer_file: str) -> None:
    import zipfile

    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("../../escaped.txt", "ham\tpwned\n")
        archive.writestr("sub/../../SMSSpamCollection", sms_tsv.read_bytes())
    out = tmp_path / "a" / "b"
    with pytest.raises(DataError, match=r"evil\.zip: no member 'SMSSpamCollection'"):
        SmsSpamDataModule(source=str(evil), data_dir=str(out), verify_checksum=False).prepare_data()
    assert not list(tmp_path.rglob("escaped.txt"))
    assert not (out / TSV_NAME).exists()

    # The expected member is written to data_dir/SMSSpamCollection whatever else the archive holds.
    mixed = tmp_path / "mixed.zip"
    with zipfile.ZipFile(mixed, "w") as archive:
        archive.writestr("../../escaped.txt", "x")
        archive.writestr(TSV_NAME, sms_tsv.read_bytes())
    SmsSpamDataModule(
        source=str(mixed), data_dir=str(out), tokenizer_file=tokenizer_file, verify_checksum=False
    ).prepare_data()
    assert (out / TSV_NAME).read_bytes() == sms_tsv.read_bytes()
    assert not list(tmp_path.rglob("escaped.txt"))


# -- every cached file is checked before it is trusted -------------------------------------------------


@pytest.mark.parametrize("cached", ["zip", "tsv", "zip+tsv", "train.csv", "splits.json", "tokenizer"])
@pytest.mark.parametrize("damage", ["corrupt", "foreign"])
def test_damaged_cached_file_is_fetched_or_rebuilt(
    cached: str, damage: str, tmp_path: Path, sms_zip: Path, tokenizer_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cached file that was altered (one byte) or replaced (another file's bytes) is never used as is: it is
    downloaded, extracted or rebuilt again, and the data module ends with the same verified files."""
    monkeypatch.setenv("SPAM_LIGHTNING_CACHE", str(tmp_path / "cache"))
    with LocalInternet() as internet:
        zip_url = internet.add_file("/sms.zip", sms_zip)
        tokenizer_url = internet.add_file("/r50k_base.tiktoken", tokenizer_file)
        data_dir = tmp_path / "data"

        def prepare() -> None:
            get_tokenizer.cache_clear()
            dm = SmsSpamDataModule(data_dir=str(data_dir), urls=[zip_url], tokenizer_url=tokenizer_url)
            dm.prepare_data()

        prepare()
        seed_dir = data_dir / "seed-123"
        paths = {
            "zip": [data_dir / ZIP_NAME],
            "tsv": [data_dir / TSV_NAME],
            "zip+tsv": [data_dir / ZIP_NAME, data_dir / TSV_NAME],
            "train.csv": [seed_dir / "train.csv"],
            "splits.json": [seed_dir / "splits.json"],
            "tokenizer": [tmp_path / "cache" / "gpt2.tiktoken"],
        }[cached]
        good = {p: p.read_bytes() for p in data_dir.rglob("*") if p.is_file()}
        good[tmp_path / "cache" / "gpt2.tiktoken"] = Path(tokenizer_file).read_bytes()
        for path in paths:
            data = bytearray(path.read_bytes())
            if damage == "corrupt":
                data[len(data) // 2] ^= 0x01
            else:
                data = bytearray(b'{"files": {}}' if path.suffix == ".json" else (seed_dir / "test.csv").read_bytes())
            path.write_bytes(bytes(data))
        internet.clear_requests()
        prepare()
        if cached == "zip":  # the verified extracted file is used; the damaged zip is removed, not trusted later
            assert not paths[0].exists()
            del good[paths[0]]
        for path, data in good.items():
            assert path.read_bytes() == data, path.name
        refetched = {"zip+tsv": ["/sms.zip"], "tokenizer": ["/r50k_base.tiktoken"]}.get(cached, [])
        assert sorted({r.path for r in internet.requests}) == refetched  # only what could not be made locally
