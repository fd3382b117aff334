"""Every field of an export's record file (or of a checkpoint's record), and a copy with one field edited: for the tests
that every field is bound (an edit is refused) or documented as provenance; and re-saving a checkpoint a test edited
on purpose."""

from __future__ import annotations

import copy
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from spam_lightning.inference.checkpoint import RECORD_KEY, record_sha256

Field = tuple[str, ...]  # the keys from the top of the file


def leaves(content: Mapping[str, Any], prefix: Field = ()) -> Iterator[Field]:
    """Every value of `content` that is not a non-empty mapping (a list is one value)."""
    for key, value in content.items():
        if isinstance(value, Mapping) and value:
            yield from leaves(value, (*prefix, str(key)))
        else:
            yield (*prefix, str(key))


def changed(value: Any) -> Any:
    """Another value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value * 2 + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list):
        return [*value, value[-1] if value else 1]
    if isinstance(value, Mapping):  # an empty one
        return {"x": 1}
    return 1  # None


def edited(content: Mapping[str, Any], field: Field) -> dict[str, Any]:
    """A deep copy of `content` with the value of `field` changed."""
    result = copy.deepcopy(dict(content))
    parent = result
    for key in field[:-1]:
        parent = parent[key]
    parent[field[-1]] = changed(parent[field[-1]])
    return result


def with_each_field_edited(model_dir: Path, record_file: str, dest: Path) -> Iterator[tuple[str, Path]]:
    """For each field of model_dir's record file (config.json: transformers' fields and our record under its key):
    its dotted name and a copy of the folder in dest (other files hard-linked) with that field alone edited."""
    content = json.loads((model_dir / record_file).read_text(encoding="utf-8"))
    for number, field in enumerate(leaves(content)):
        folder = dest / str(number)
        shutil.copytree(model_dir, folder, copy_function=os.link)
        (folder / record_file).unlink()  # a hard link: never write through it into model_dir
        (folder / record_file).write_text(json.dumps(edited(content, field)), encoding="utf-8")
        yield ".".join(field), folder


def resave_checkpoint(ckpt: dict[str, Any], path: Path) -> Path:
    """torch.save of a checkpoint whose record or tensors a test edited, its record_sha256 made again (as a forger, or a
    buggy writer, would): the edit reaches the checks behind the hash (values, shapes, finiteness, provenance)."""
    record = ckpt[RECORD_KEY]
    record["record_sha256"] = record_sha256(record, ckpt["state_dict"])
    torch.save(ckpt, path)
    return path
