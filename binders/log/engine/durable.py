"""A log directory: the :class:`~binders.log.engine.storage.Storage` of a durable broker.

Layout under ``path``::

    lock                         flock: shared by every process that has the directory open
    format.json                  {"format": 1}
    topics/<topic>/topic.json    {"name": ..., "partitions": N}
    topics/<topic>/<p>/<base:020d>.log, .index      segments (engine.segment)
    topics/<topic>/<p>/lock                         flock around every change (engine.disk)
    groups/<group>/<gen:010d>.offsets               commits (engine.offsets)
    groups/<group>/members/<topic>/<id>, owners/<topic>/<p>   (engine.membership)

Topic and group names are percent-encoded into directory names. Several
processes may open one directory. The first opener (the one that gets the
``lock`` exclusively) recovers it alone — cuts torn tails, compacts commit
files — and downgrades to a shared lock once its broker has opened every
topic (:meth:`DurableStorage.opened`); later openers wait for that, holding
the lock shared for as long as they run.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote

from binder.errors import BackendError
from binders.log.engine.disk import DiskPartitionLog, TopicPolicy
from binders.log.engine.membership import Membership
from binders.log.engine.offsets import DiskOffsetStore
from binders.log.engine.sync import Syncer, fsync_path

__all__ = [
    "FORMAT",
    "DurableStorage",
    "StorageSettings",
    "read_topic_dir",
    "topic_dir_name",
    "write_json",
]

log = logging.getLogger("binder.log")

FORMAT = 1
WATCH_INTERVAL = 0.05
Fsync = Literal["always", "batch", "never"]


@dataclass(frozen=True)
class StorageSettings:
    """How a log directory is written: fsync policy, and roll/retention per topic."""

    fsync: Fsync = "batch"
    fsync_interval_ms: float = 0.0
    policy: TopicPolicy = field(default_factory=TopicPolicy)
    topics: Mapping[str, TopicPolicy] = field(default_factory=dict)

    def policy_for(self, topic: str) -> TopicPolicy:
        return self.topics.get(topic, self.policy)


def topic_dir_name(topic: str) -> str:
    """``topic`` as a directory name (percent-encoded; never ``.`` or ``..``)."""
    if not topic:
        raise BackendError("log: a topic needs a name")
    name = quote(topic, safe="")
    return name.replace(".", "%2E") if name in {".", ".."} else name


def write_json(path: Path, data: Any, durable: bool) -> None:
    """Replace ``path`` with ``data`` atomically (temp file, fsync if ``durable``, rename)."""
    temp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(temp, "w", encoding="utf-8") as file:
        json.dump(data, file)
        if durable:
            file.flush()
            os.fsync(file.fileno())
    os.replace(temp, path)
    if durable:
        fsync_path(path.parent)


class DurableStorage:
    """Topics and groups in a directory (see the module docstring)."""

    def __init__(self, path: Path, settings: StorageSettings) -> None:
        self.path = path
        self.settings = settings
        self._durable = settings.fsync != "never"
        path.mkdir(parents=True, exist_ok=True)
        self._lock_fd, self.first = _lock(path)
        self.syncer: Syncer | None = None
        """The fsync thread (``None`` with ``fsync: never``)."""
        try:
            self._check_format()
            self._topics_dir = path / "topics"
            self._topics_dir.mkdir(exist_ok=True)
            if settings.fsync != "never":
                self.syncer = Syncer(settings.fsync, settings.fsync_interval_ms / 1000)
            self.offsets = DiskOffsetStore(path / "groups", self.syncer, exclusive=self.first)
        except BaseException:
            self.close()
            raise
        self.syncs = self.syncer is not None
        self.maintenance_interval = _maintenance_interval(settings)
        self.watch_interval = WATCH_INTERVAL
        """Seconds between looks for what other processes appended, and who joined or died."""
        self._counts: dict[str, int] = {}

    def _check_format(self) -> None:
        marker = self.path / "format.json"
        if not marker.exists():
            write_json(marker, {"format": FORMAT}, self._durable)
            return
        found = json.loads(marker.read_text(encoding="utf-8")).get("format")
        if found != FORMAT:
            raise BackendError(
                f"log: {self.path} holds format {found!r}; this release reads {FORMAT}"
            )

    def opened(self) -> None:
        """The broker opened every topic: recovery is over, let other processes in. Idempotent."""
        if self._lock_fd >= 0:
            fcntl.flock(self._lock_fd, fcntl.LOCK_SH)

    def membership(self, topic: str, group: str) -> Membership:
        """Who belongs to ``group`` on ``topic`` across processes, and who owns which partition."""
        return Membership(self.path / "groups" / quote(group, safe=""), topic)

    # -- the Storage protocol -----------------------------------------------------------------

    def topics(self) -> dict[str, int]:
        found = {}
        for directory in sorted(p for p in self._topics_dir.iterdir() if p.is_dir()):
            if directory.name.startswith(".deleted-"):  # a delete the last run did not finish
                shutil.rmtree(directory, ignore_errors=True)
                continue
            name, count = read_topic_dir(directory)
            if count:
                found[name] = count
                self._counts[name] = count
        return found

    def open_log(self, topic: str, partition: int) -> DiskPartitionLog:
        directory = self._topics_dir / topic_dir_name(topic)
        if self._counts.get(topic, 0) <= partition:
            directory.mkdir(exist_ok=True)
            (directory / str(partition)).mkdir(exist_ok=True)
            write_json(
                directory / "topic.json",
                {"name": topic, "partitions": partition + 1},
                self._durable,
            )
            if self._durable:
                fsync_path(self._topics_dir)
            self._counts[topic] = partition + 1
        return DiskPartitionLog(
            directory / str(partition),
            topic,
            partition,
            self.settings.policy_for(topic),
            self.syncer,
            lambda: self.offsets.floor(topic, partition),
        )

    def delete_topic(self, topic: str) -> None:
        self._counts.pop(topic, None)
        directory = self._topics_dir / topic_dir_name(topic)
        if directory.exists():  # renamed first, so a crash never leaves half a topic behind
            doomed = self._topics_dir / f".deleted-{uuid.uuid4().hex}"
            directory.rename(doomed)
            shutil.rmtree(doomed, ignore_errors=True)

    def close(self) -> None:
        if self.syncer is not None:
            self.syncer.close()
        fd, self._lock_fd = self._lock_fd, -1
        if fd >= 0:
            os.close(fd)


def read_topic_dir(directory: Path) -> tuple[str, int]:
    """A topic directory's name and partition count (from ``topic.json``, else its contents)."""
    name = unquote(directory.name)
    count = 0
    while (directory / str(count)).is_dir():
        count += 1
    try:
        meta = json.loads((directory / "topic.json").read_text(encoding="utf-8"))
        name, count = meta["name"], max(count, int(meta["partitions"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning(
            "log: %s/topic.json unreadable (%s); using the directory's contents", directory, exc
        )
    return name, count


def _lock(path: Path) -> tuple[int, bool]:
    """The directory's lock: exclusive if no other process has it open (then True), else shared."""
    fd = os.open(path / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fcntl.flock(fd, fcntl.LOCK_SH)  # waits while a first opener recovers
        return fd, False
    except BaseException:
        os.close(fd)
        raise
    return fd, True


def _maintenance_interval(settings: StorageSettings) -> float:
    """Often enough for the shortest age limit configured; between 0.1 s and 30 s."""
    limits = [
        ms
        for policy in (settings.policy, *settings.topics.values())
        for ms in (policy.segment_ms, policy.retention_ms)
        if ms is not None
    ]
    return min(30.0, max(0.1, min(limits, default=120_000) / 4000))
