"""Consumer groups across processes: membership and partition ownership as flocked files.

Under ``groups/<group>/`` (names percent-encoded)::

    members/<topic>/<id>     one file per live member, flocked by its process
    owners/<topic>/<p>       flocked by the member reading partition ``p``

The kernel drops a process's locks when it dies, so a member file nobody
holds belongs to a dead member (it is removed by whoever notices), and an
owner file nobody holds is a free partition: failure detection is immediate
and needs no heartbeat. A member file is locked before it gets its name (it
is made under a dot-name and renamed), so no one mistakes a member still
joining for a dead one.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import threading
import time
from pathlib import Path
from urllib.parse import quote

__all__ = ["Membership", "member_id"]

_ids_lock = threading.Lock()
_last_ns = 0
_counter = itertools.count()


def member_id() -> str:
    """A new member id; ids sort in the order they were made (in a process, and across by time)."""
    global _last_ns
    with _ids_lock:
        _last_ns = max(time.time_ns(), _last_ns + 1)
        return f"{_last_ns:020d}-{os.getpid():08d}-{next(_counter):06d}"


def _try_lock(path: Path, create: bool = False) -> int | None:
    """An fd on ``path`` holding its exclusive flock, or ``None`` if someone else holds it."""
    flags = os.O_RDWR | (os.O_CREAT if create else 0)
    try:
        fd = os.open(path, flags, 0o644)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


class Membership:
    """One group on one topic, seen through its files (see the module docstring).

    Not thread-safe: the broker calls it under its lock.
    """

    def __init__(self, group_dir: Path, topic: str) -> None:
        name = quote(topic, safe="")
        self._members = group_dir / "members" / name
        self._owners = group_dir / "owners" / name
        self._mine: dict[str, int] = {}
        self._owned: dict[int, int] = {}

    def join(self, member: str) -> None:
        """Announce ``member`` (live while this process holds it)."""
        self._members.mkdir(parents=True, exist_ok=True)
        temp = self._members / f".{member}.tmp"
        fd = os.open(temp, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(temp, self._members / member)
        self._mine[member] = fd

    def leave(self, member: str) -> None:
        """Withdraw ``member``. Idempotent."""
        fd = self._mine.pop(member, None)
        if fd is not None:
            with contextlib.suppress(FileNotFoundError):
                (self._members / member).unlink()
            os.close(fd)

    def live(self) -> list[str]:
        """The ids of every live member, sorted; files of dead members are removed."""
        try:
            names = os.listdir(self._members)
        except FileNotFoundError:
            return sorted(self._mine)
        found = []
        for name in names:
            if name.startswith("."):
                continue
            if name in self._mine or self._alive(self._members / name):
                found.append(name)
        return sorted(found)

    @staticmethod
    def _alive(path: Path) -> bool:
        """Whether some process holds ``path``; a dead member's file is removed."""
        if not path.exists():
            return False  # it just left
        fd = _try_lock(path)
        if fd is None:
            return path.exists()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.close(fd)
        return False

    def own(self, partition: int) -> bool:
        """Take ``partition`` if no process holds it; True if this process holds it now."""
        if partition in self._owned:
            return True
        self._owners.mkdir(parents=True, exist_ok=True)
        fd = _try_lock(self._owners / str(partition), create=True)
        if fd is None:
            return False
        self._owned[partition] = fd
        return True

    def disown(self, partition: int) -> None:
        """Release ``partition`` (after its last commit). Idempotent."""
        fd = self._owned.pop(partition, None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        for member in list(self._mine):
            self.leave(member)
        for partition in list(self._owned):
            self.disown(partition)
