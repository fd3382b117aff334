"""The 127.0.0.1 stand-in for the internet (tests/helpers/local_internet.py): static files, faults, and the
Hugging Face Hub stand-in driven by the project's real `download_pretrained` (huggingface_hub, no mock)."""

from __future__ import annotations

import filecmp
import http.client
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers.local_internet import (
    TIKTOKEN_R50K_PATH,
    UCI_ZIP_PATH,
    LocalInternet,
    hf_resolve_path,
    write_gpt2_safetensors,
)

from spam_lightning.model.gpt import PRESETS
from spam_lightning.model.weights import HF_FILENAME, HF_REVISIONS, build_gpt, download_pretrained, hf_repo_id

REPO = Path(__file__).resolve().parents[1]
GPT2 = hf_repo_id("gpt2")


@pytest.fixture
def internet() -> Iterator[LocalInternet]:
    with LocalInternet() as net:
        yield net


def _get(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_static_files_get_and_head(internet: LocalInternet, sms_zip: Path, tokenizer_file: str) -> None:
    for path, source in ((UCI_ZIP_PATH, sms_zip), (TIKTOKEN_R50K_PATH, Path(tokenizer_file))):
        url = internet.add_file(path, source)
        assert url == f"http://127.0.0.1:{internet.port}{path}"
        data = source.read_bytes()
        status, headers, body = _get(url)
        assert (status, int(headers["Content-Length"]), body == data) == (200, len(data), True)
        status, headers, body = _get(url, "HEAD")
        assert (status, int(headers["Content-Length"]), body) == (200, len(data), b"")
    assert _get(internet.url("/static/public/228/other.zip"))[0] == 404
    assert internet.requests == [
        ("GET", UCI_ZIP_PATH),
        ("HEAD", UCI_ZIP_PATH),
        ("GET", TIKTOKEN_R50K_PATH),
        ("HEAD", TIKTOKEN_R50K_PATH),
        ("GET", "/static/public/228/other.zip"),
    ]
    assert internet.count("GET") == 3 and internet.count(path=UCI_ZIP_PATH) == 2


def test_faults(internet: LocalInternet) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB: more than one chunk
    url = internet.add_file("/f.bin", data)

    internet.fail("/f.bin", status=503, times=1)
    assert _get(url)[0] == 503
    assert _get(url)[2] == data  # `times` used up

    internet.corrupt("/f.bin", times=1)
    body = _get(url)[2]
    assert len(body) == len(data) and body != data
    assert sum(a != b for a, b in zip(body, data, strict=True)) == 1

    internet.truncate("/f.bin", 1000)
    assert _get(url, "HEAD")[0] == 200  # body faults leave HEAD alone
    with pytest.raises(http.client.IncompleteRead) as err:
        _get(url)
    assert err.value.partial == data[:1000]
    internet.clear_faults()
    assert _get(url)[2] == data


def test_hub_serves_only_the_registered_revision(
    internet: LocalInternet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    revision = HF_REVISIONS["gpt2"]
    internet.add_hf_file(GPT2, HF_FILENAME, b"weights", revision)
    internet.patch_hub(monkeypatch, tmp_path / "hf")

    status, headers, _ = _get(internet.url(hf_resolve_path(GPT2, "main", HF_FILENAME)), "HEAD")
    assert (status, headers["X-Error-Code"]) == (404, "RevisionNotFound")
    status, headers, _ = _get(internet.url(hf_resolve_path(GPT2, revision, HF_FILENAME)), "HEAD")
    assert (status, headers["X-Repo-Commit"], headers["X-Linked-Size"]) == (200, revision, "7")
    assert not any(name.lower().startswith("x-xet") for name in headers)

    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(GPT2, HF_FILENAME, revision="main")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(GPT2, HF_FILENAME, revision="0" * 40)
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(GPT2, "config.json", revision=revision)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("openai-community/gpt3", HF_FILENAME, revision=revision)
    assert internet.count("GET", hf_resolve_path(GPT2, "main", HF_FILENAME)) == 0


def test_download_pretrained_through_the_local_hub(
    internet: LocalInternet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The project's real download path (huggingface_hub, pinned commit, cache) against a 124M-shaped random file."""
    served = write_gpt2_safetensors(tmp_path / "served" / HF_FILENAME, "gpt2", seed=0)
    revision = HF_REVISIONS["gpt2"]
    resolve = internet.add_hf_file(GPT2, HF_FILENAME, served, revision)
    assert revision in resolve
    hf_home = tmp_path / "hf"
    internet.patch_hub(monkeypatch, hf_home)

    path = download_pretrained("gpt2")
    assert path.resolve().is_relative_to(hf_home) and filecmp.cmp(path, served, shallow=False)
    assert internet.requests == [("HEAD", resolve), ("GET", resolve)]  # plain HTTP, at the pinned commit

    internet.clear_requests()
    assert download_pretrained("gpt2") == path
    model = build_gpt(PRESETS["gpt2"], "gpt2")  # the preset name: download (cached) + load
    assert internet.requests == []  # a pinned commit already in the cache needs no request at all
    from safetensors import safe_open

    with safe_open(served, "pt") as f:
        assert torch.equal(model.tok_emb.weight, f.get_tensor("wte.weight"))


def test_hub_env_points_a_subprocess_here(internet: LocalInternet, tmp_path: Path) -> None:
    """huggingface_hub reads HF_ENDPOINT/HF_HOME at import: a fresh process only needs `hub_env`.

    (The child calls hf_hub_download as `download_pretrained` does, without importing the project, whose
    import of Lightning alone takes seconds.)"""
    revision = HF_REVISIONS["gpt2"]
    resolve = internet.add_hf_file(GPT2, HF_FILENAME, b"not really safetensors", revision)
    code = "import sys, huggingface_hub as hub; print(hub.hf_hub_download(*sys.argv[1:3], revision=sys.argv[3]))"
    result = subprocess.run(
        [sys.executable, "-c", code, GPT2, HF_FILENAME, revision],
        cwd=REPO,
        env={**os.environ, **internet.hub_env(tmp_path / "hf")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.strip())
    assert path.resolve().is_relative_to(tmp_path / "hf") and path.read_bytes() == b"not really safetensors"
    assert internet.requests == [("HEAD", resolve), ("GET", resolve)]
