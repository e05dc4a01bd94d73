"""Writer locks of a store: one writer per (dataset, model) at a time, across processes and hosts.

A lock is a file ``STORE/.locks/<dataset key>/<model>.lock`` holding JSON ``{pid, host, started,
proc_start, token}``. It is created complete with one ``os.link`` (atomic, fails if the file
exists, also on NFS), so a reader never sees a half-written lock. While held, a thread touches the
file every ``heartbeat`` seconds. A holder that died does not keep the lock: on the same host a
holder whose pid is gone (or now belongs to another process: ``proc_start`` differs) is stale; on
another host, a lock whose heartbeat (mtime) is older than ``stale_after`` seconds is stale. A stale
lock is removed under a short-lived ``.break`` file, so two waiters never both take it over.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from mlipspace.store._io import _alive

LOCK_DIR = ".locks"
#: A ``.break`` file older than this (seconds) was left by a process killed while breaking a lock.
BREAK_STALE_S = 30.0


def lock_path(root: Path, key: str, model: str) -> Path:
    """Where the writer lock of ``model`` on dataset ``key`` lives."""
    return Path(root) / LOCK_DIR / key / f"{model}.lock"


def _proc_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux ``/proc/<pid>/stat`` field 22), telling a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, as written in its file, and when its heartbeat last beat (file mtime)."""

    pid: int
    host: str
    started: float
    proc_start: str | None
    token: str
    mtime: float

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"pid {self.pid}@{self.host} since {since}"

    def is_stale(self, stale_after: float) -> bool:
        """Dead holder: same host and the pid is gone (or reused); other host and no heartbeat for ``stale_after`` s."""
        if self.host == socket.gethostname():
            if not _alive(self.pid):
                return True
            now = _proc_start(self.pid)
            return self.proc_start is not None and now is not None and now != self.proc_start
        return time.time() - self.mtime > stale_after


def read_holder(path: Path) -> Holder | None:
    """The holder of the lock file ``path``; ``None`` when there is no lock (or it vanished meanwhile).

    An unreadable lock file counts as held by an unknown process whose heartbeat is its mtime.
    """
    mtime = time.time()
    try:
        mtime = os.stat(path).st_mtime
        with open(path) as fh:
            raw = json.load(fh)
        return Holder(int(raw["pid"]), str(raw["host"]), float(raw["started"]), raw.get("proc_start"),
                      str(raw["token"]), mtime)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return Holder(-1, "?", mtime, None, "?", mtime)


class StoreLock:
    """An exclusive, stale-aware lock file; ``try_acquire`` / ``acquire`` / ``release`` (or ``with``).

    ``heartbeat``: seconds between touches of the file while held; ``stale_after``: seconds without a
    heartbeat after which a holder on another host counts as dead (keep it well above ``heartbeat``).
    """

    def __init__(self, path: Path, *, heartbeat: float = 15.0, stale_after: float = 300.0):
        self.path = Path(path)
        self.heartbeat = float(heartbeat)
        self.stale_after = float(stale_after)
        self.token: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"StoreLock({str(self.path)!r}, held={self.token is not None})"

    def try_acquire(self) -> Holder | None:
        """Take the lock if it is free or stale: ``None`` when taken, else the live holder."""
        if self.token is not None:
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # free -> taken; stale -> broken, then taken; else held
            token = uuid.uuid4().hex
            tmp = self.path.with_name(f".{self.path.name}.{token}")
            with open(tmp, "w") as fh:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                           "proc_start": _proc_start(os.getpid()), "token": token}, fh)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, self.path)
                taken = True
            except FileExistsError:
                taken = False
            finally:
                os.unlink(tmp)
            if taken:
                self.token = token
                self._start_heartbeat()
                return None
            holder = read_holder(self.path)
            if holder is not None and not (holder.is_stale(self.stale_after) and self._break(holder)):
                return holder
        return read_holder(self.path)

    def _break(self, stale: Holder) -> bool:
        """Remove the lock judged stale, if it is still that one; ``False`` if someone else is breaking it."""
        brk = self.path.with_name(self.path.name + ".break")
        try:
            fd = os.open(brk, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                if time.time() - os.stat(brk).st_mtime > BREAK_STALE_S:
                    os.unlink(brk)  # its breaker died mid-way
            except FileNotFoundError:
                pass
            return False
        try:
            now = read_holder(self.path)
            if now is not None and now.token == stale.token and now.is_stale(self.stale_after):
                os.unlink(self.path)
            return True
        finally:
            os.close(fd)
            os.unlink(brk)

    def acquire(self, *, wait: bool = True, poll: float = 0.2, on_wait=None) -> None:
        """Take the lock; if held, wait (calling ``on_wait(holder)`` once) or raise ``TimeoutError(holder)``."""
        told = False
        while True:
            holder = self.try_acquire()
            if holder is None:
                return
            if not wait:
                raise TimeoutError(holder)
            if not told and on_wait is not None:
                on_wait(holder)
                told = True
            time.sleep(poll)

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat {self.path.name}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            holder = read_holder(self.path)
            if holder is None or holder.token != self.token:
                return  # taken over (we were judged dead): leave the new holder's file alone
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        """Give the lock back (remove the file if it is still ours)."""
        if self.token is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        holder = read_holder(self.path)
        if holder is not None and holder.token == self.token:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        self.token = None

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
