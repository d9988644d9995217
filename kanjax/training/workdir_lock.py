"""One run per workdir: a lock file holding the owner's pid and host, taken before a run writes anything.

    with WorkdirLock(workdir):      # WorkdirBusyError (an InputError: one line, exit 2) if another
        ...                         # live run holds it; released on leaving, error or not

The lock is `<workdir>/.lock`, created with O_CREAT | O_EXCL (atomic on local filesystems and NFSv3+),
so of two runs started together exactly one gets it. A lock left by a process that died (kill -9,
a machine that went down) is stale: on the same host a pid that no longer exists is taken over with
one printed line. A lock from another host cannot be checked from here; the error says which file
to delete once that run is known to be gone.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path

from kanjax.errors import InputError

LOCK_NAME = ".lock"


class WorkdirBusyError(InputError):
    """Another live run holds the workdir's lock."""


def _alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def read_owner(path: Path) -> dict:
    """The lock file's {"pid", "host", "started"}; {} when unreadable (half-written or gone)."""
    try:
        owner = json.loads(path.read_text())
        return owner if isinstance(owner, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe(owner: dict) -> str:
    started = owner.get("started")
    since = f", started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started))}" if started else ""
    return f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}{since}"


class WorkdirLock:
    """Exclusive use of `workdir` by this process (see the module docstring). Re-entrant within one
    process is not needed and not supported: a second acquire by the same pid is refused like any
    other live owner."""

    def __init__(self, workdir: str | Path):
        self.workdir = Path(workdir)
        self.path = self.workdir / LOCK_NAME
        self.held = False

    def acquire(self) -> WorkdirLock:
        self.workdir.mkdir(parents=True, exist_ok=True)
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})
        for _ in range(3):  # a stale lock removed by us (or a racing run) is retried, not looped on
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, "w") as f:
                f.write(record)
            self.held = True
            return self
        raise WorkdirBusyError(f"workdir {self.workdir} is in use by another run ({_describe(read_owner(self.path))})")

    def _take_over_if_stale(self) -> None:
        owner = read_owner(self.path)
        if not owner:  # being written this instant by a run that just won the race: give it a moment
            time.sleep(0.2)
            owner = read_owner(self.path)
        pid, host = owner.get("pid"), owner.get("host")
        if host == socket.gethostname() and isinstance(pid, int) and not _alive(pid):
            print(f"workdir {self.workdir}: taking over the lock of pid {pid}, which no longer runs", flush=True)
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass  # another run took it over first; the next O_EXCL decides
            return
        if not owner:
            raise WorkdirBusyError(f"workdir {self.workdir} is locked by {self.path}, which names no owner; "
                                   "delete it if no run uses this workdir")
        where = "" if host == socket.gethostname() else f"; if that run is gone, delete {self.path}"
        raise WorkdirBusyError(f"workdir {self.workdir} is in use by another run ({_describe(owner)}){where}; "
                               "wait for it or use another --config.workdir")

    def release(self) -> None:
        """Remove the lock if this process still owns it (never another run's)."""
        if not self.held:
            return
        self.held = False
        if read_owner(self.path).get("pid") == os.getpid():
            try:
                os.unlink(self.path)
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


__all__ = ["WorkdirLock", "WorkdirBusyError", "read_owner", "LOCK_NAME"]
