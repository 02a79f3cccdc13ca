"""Committed offsets on disk: kept across restarts, torn writes cut, files compacted."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from binders.log.engine.offsets import DiskOffsetStore, read_group_dir


def test_commits_survive_a_restart_even_without_close(tmp_path: Path) -> None:
    store = DiskOffsetStore(tmp_path, None)
    store.commit("billing", "orders", 0, 10)
    store.commit("billing", "orders", 0, 12)
    store.commit("billing", "orders", 3, 7)
    store.commit("audit", "orders", 0, 1)
    again = DiskOffsetStore(tmp_path, None)  # the first one was never closed: a killed process
    assert again.committed("billing", "orders", 0) == 12
    assert again.committed("billing", "orders", 3) == 7
    assert again.committed("billing", "orders", 1) is None
    assert again.groups("orders") == {"billing", "audit"}


def test_group_and_topic_names_may_hold_any_character(tmp_path: Path) -> None:
    store = DiskOffsetStore(tmp_path, None)
    store.commit("a/b..c %", "t/ü", 0, 5)
    store.close()
    assert DiskOffsetStore(tmp_path, None).committed("a/b..c %", "t/ü", 0) == 5


def test_a_torn_last_commit_is_cut_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = DiskOffsetStore(tmp_path, None)
    store.commit("g", "t", 0, 10)
    store.commit("g", "t", 0, 11)
    (path,) = (tmp_path / "g").glob("*.offsets")
    path.write_bytes(path.read_bytes()[:-3])
    with caplog.at_level(logging.WARNING, "binder.log"):
        again = DiskOffsetStore(tmp_path, None)
    assert again.committed("g", "t", 0) == 10
    assert "torn last write" in caplog.text


def test_required_groups_set_the_retention_floor(tmp_path: Path) -> None:
    store = DiskOffsetStore(tmp_path, None)
    assert store.floor("t", 0) is None
    store.require("billing", "t")
    store.require("audit", "t")
    store.commit("billing", "t", 0, 50)
    store.commit("audit", "t", 0, 20)
    store.commit("casual", "t", 0, 1)  # not required: does not hold retention back
    assert store.floor("t", 0) == (20, ["audit"])
    store.close()
    again = DiskOffsetStore(tmp_path, None)
    assert again.floor("t", 0) == (20, ["audit"])
    again.delete_group("audit", "t")
    assert again.floor("t", 0) == (50, ["billing"])
    assert DiskOffsetStore(tmp_path, None).groups("t") == {"billing", "casual"}
    assert not (tmp_path / "audit").exists()  # a group that left every topic is removed


def test_the_commit_file_is_compacted_on_open_and_when_it_grows(tmp_path: Path) -> None:
    store = DiskOffsetStore(tmp_path, None, rotate_at=100)
    for offset in range(1, 1_000):
        store.commit("g", "t", offset % 3, offset)
    files = list((tmp_path / "g").glob("*.offsets"))
    assert len(files) == 1 and files[0].stat().st_size < 120 * 20
    state, _, problems = read_group_dir(tmp_path / "g")
    assert state == {("g", "t"): {0: 999, 1: 997, 2: 998}} and not problems
    store.close()
    DiskOffsetStore(tmp_path, None)
    (compacted,) = (tmp_path / "g").glob("*.offsets")
    assert compacted.stat().st_size < 200


def test_two_stores_on_one_directory_see_each_other_s_commits(tmp_path: Path) -> None:
    first = DiskOffsetStore(tmp_path, None)
    first.commit("g", "t", 0, 5)
    second = DiskOffsetStore(tmp_path, None, exclusive=False)  # another process, opened later
    second.commit("g", "t", 1, 7)
    first.commit("g", "t", 0, 6)
    assert (first.committed("g", "t", 1), second.committed("g", "t", 0)) == (7, 6)
    assert read_group_dir(tmp_path / "g")[0] == {("g", "t"): {0: 6, 1: 7}}


def test_a_store_follows_a_rotation_made_by_another(tmp_path: Path) -> None:
    first = DiskOffsetStore(tmp_path, None, rotate_at=10)
    second = DiskOffsetStore(tmp_path, None, rotate_at=10, exclusive=False)
    for offset in range(1, 40):
        (first if offset % 3 else second).commit("g", "t", 0, offset)
    assert len(list((tmp_path / "g").glob("*.offsets"))) == 1
    assert second.committed("g", "t", 0) == first.committed("g", "t", 0) == 39
    second.commit("g", "t", 0, 40)
    assert DiskOffsetStore(tmp_path, None).committed("g", "t", 0) == 40
