"""Checked downloads: the first URL that works, sha256-verified, written atomically (pooch)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import pooch

from spam_lightning.errors import DownloadError

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Where downloads shared by every command and run are kept (the GPT-2 vocabulary):
    $SPAM_LIGHTNING_CACHE, else the user's cache folder (~/.cache/spam_lightning on Linux)."""
    return Path(os.environ.get("SPAM_LIGHTNING_CACHE") or pooch.os_cache("spam_lightning")).expanduser()


def fetch(urls: Sequence[str], sha256: str, dest: Path, what: str, offline_hint: str) -> Path:
    """Download `dest` from the first of `urls` that works and has the expected sha256.

    pooch streams into a temporary file and moves it into place only after the hash matched, so a
    failed, truncated or tampered download leaves nothing behind that a later run would trust; a
    file already at `dest` with the right hash is used without any network access.
    """
    errors = []
    for url in urls:
        try:
            path = pooch.retrieve(
                url, known_hash=f"sha256:{sha256}", fname=dest.name, path=dest.parent, progressbar=True
            )
            return Path(path)
        except Exception as err:  # any failure means: try the next URL
            cause = " ".join(str(err).split()) or type(err).__name__
            log.warning("download of %s failed: %s", url, cause)
            errors.append(f"{url}: {cause[:400]}")
    raise DownloadError(f"could not download {what} ({'; '.join(errors)}). To run offline, {offline_hint}")
