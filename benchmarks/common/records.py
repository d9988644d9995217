"""Study records: one JSON file per unit of work, written atomically (a killed run leaves no
half-written record, so a rerun redoes exactly the missing units), with the commit that made it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def git_commit(repo: str | Path = REPO) -> str:
    """HEAD of the checkout at `repo`, suffixed -dirty when tracked files have changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True).stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_atomic(path: str | Path, text: str) -> None:
    """`text` into `path` through a temporary file and a rename (same folder, so the rename is atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: str | Path, record: dict, *, allow_nan: bool = True) -> None:
    write_atomic(path, json.dumps(record, indent=1, allow_nan=allow_nan))


def read_json_folder(folder: str | Path, pattern: str = "*.json", file_key: str | None = None) -> list[dict]:
    """Every record in `folder` matching `pattern`, in path order (temporary files skipped); with
    `file_key`, each record also holds its file name under that key."""
    out = []
    for p in sorted(Path(folder).glob(pattern)):
        if ".tmp" not in p.name:
            out.append({**json.loads(p.read_text()), **({file_key: p.name} if file_key else {})})
    return out


def group_records(records: list[dict], key: str, order: str | None = None) -> dict[str, list[dict]]:
    """{record[key]: its records}, groups in first-seen order, each sorted by record[order] if given."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r[key], []).append(r)
    if order:
        for runs in groups.values():
            runs.sort(key=lambda r: r[order])
    return groups


def command_line(module: str) -> str:
    """How this process was started, as `python -m <module> <its arguments>` (tables and JSON name it)."""
    return " ".join(["python -m", module, *sys.argv[1:]])


def write_table(path: str | Path | None, title: str, command: str, table: str) -> None:
    """A benchmark's markdown table under its title and the command that produced it; nothing when
    `path` is None (the table is printed anyway)."""
    if path:
        write_atomic(path, f"# {title}\n\nCommand: `{command}`\n\n{table}\n")
