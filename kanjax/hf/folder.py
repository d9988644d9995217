"""Writing a Hugging Face checkpoint folder safely: `kanjax.hf.save_pretrained` stages every file in
a sibling temp folder and swaps it into place with renames, so a failed save never clobbers the last
good folder; files of the old folder that the save does not produce (a README, logs) are kept.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from kanjax.hf import kan_export as hf_kan

# Files save_pretrained replaces; anything else in an existing target folder is kept.
STALE_PATTERNS = ("model*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin*",
                  "config.json", "generation_config.json", *hf_kan.EXPORT_FILES)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "added_tokens.json", "tokenizer.model",
                   "chat_template.jinja", "chat_template.json")


def generation_config(config) -> dict:
    ids = {k: getattr(config, k, None) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    return {"_from_model_config": True, **{k: v for k, v in ids.items() if v is not None}}


def write_tokenizer(tokenizer, folder: Path) -> None:
    if hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(str(folder))
        return
    src = Path(tokenizer)
    names = [n for n in TOKENIZER_FILES if (src / n).is_file()]
    if not names:
        raise FileNotFoundError(f"no tokenizer files ({', '.join(TOKENIZER_FILES)}) in {src}")
    for n in names:
        shutil.copy2(src / n, folder / n)


def swap_into_place(staged: Path, target: Path) -> None:
    """Replace `target` by the fully written `staged` folder with renames only.

    Files in an existing target that this save does not produce (a README, logs, other
    subfolders) are moved into the new folder; stale weights/configs are dropped.
    """
    if not target.exists():
        os.replace(staged, target)
        return
    if not target.is_dir():
        raise NotADirectoryError(f"{target} exists and is not a folder")
    backup = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    backup.rmdir()
    os.replace(target, backup)
    try:
        os.replace(staged, target)
    except BaseException:
        os.replace(backup, target)  # put the old folder back
        raise
    stale = {p.name for pat in STALE_PATTERNS for p in backup.glob(pat)}
    for p in backup.iterdir():
        if p.name not in stale and not (target / p.name).exists():
            os.replace(p, target / p.name)
    shutil.rmtree(backup, ignore_errors=True)


def public_permissions(folder: Path) -> None:
    """mkdtemp makes a 0700 folder: give it and its files the modes the umask grants new ones."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for f in folder.iterdir():
        f.chmod((0o777 if f.is_dir() else 0o666) & ~umask)


@contextlib.contextmanager
def staged(target: Path) -> Iterator[Path]:
    """A sibling temp folder to write `target`'s files into; when the block ends without an error
    it gets the usual permissions and replaces `target` (`swap_into_place`). Removed either way:
    a failed write leaves `target` as it was."""
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield folder
        public_permissions(folder)
        swap_into_place(folder, target)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
