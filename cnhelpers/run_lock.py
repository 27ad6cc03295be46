"""One run per output folder: a lock that a second run into the same ``--output_dir`` is refused by.

Two runs writing one folder (a training cell started twice, or the CLI beside a notebook) would interleave their
``train_log.jsonl`` lines and overwrite each other's checkpoints. :class:`OutputDirLock` holds an exclusive
``flock`` on ``output_dir/.run.lock`` for as long as the run lasts; the file names the run that holds it (process,
host, start time, command), so the refusal can say who, and is removed when the run ends, so a finished run leaves
only its outputs. The operating system drops the lock when the process ends, however it ends: a run that crashed or
was killed never leaves the folder locked (its stale file is taken over by the next run).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

try:  # Linux and macOS (the course's platforms, Colab included); elsewhere runs are not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

LOCK_FILE = ".run.lock"


class OutputDirInUseError(ValueError):
    """Another run holds the output folder's lock (a ValueError: the CLI reports it in one line, as bad input)."""


class OutputDirLock:
    """``with OutputDirLock(output_dir):`` the block runs only if no other run holds ``output_dir``.

    ``enabled=False`` (the other processes of a multi-process launch: their main process holds it) does nothing.
    """

    def __init__(self, output_dir, enabled: bool = True):
        self.path, self.enabled, self.file = Path(output_dir) / LOCK_FILE, enabled, None

    def __enter__(self):
        if not self.enabled or fcntl is None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            self.file = open(self.path, "a+")
            try:
                fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.file.seek(0)
                holder = describe_holder(self.file.read())
                self.file.close()
                self.file = None
                raise OutputDirInUseError(
                    f"{self.path.parent} is in use by another run ({holder}): wait for it to finish (or stop it), or "
                    "train into another --output_dir.") from None
            # A run that ended between our open and our lock removed the file we locked: lock the current one.
            if self.path.exists() and os.path.samestat(os.fstat(self.file.fileno()), os.stat(self.path)):
                break
            self.file.close()
        self.file.seek(0)
        self.file.truncate()
        self.file.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                    "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                    "command": " ".join(sys.argv)[:300]}))
        self.file.flush()
        return self

    def __exit__(self, *exc):
        if self.file is not None:
            self.path.unlink(missing_ok=True)  # still locked: no other run can hold this file now
            self.file.close()  # closing the file drops the lock
            self.file = None


def describe_holder(text: str) -> str:
    """``process 123 on host, started ..., running `...```, from a lock file's contents (what is known of it)."""
    try:
        holder = json.loads(text)
    except json.JSONDecodeError:
        return "a run that has not written its name yet"
    return (f"process {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}, "
            f"running `{holder.get('command')}`")
