"""The handled-ids store remembers across restarts, per group, for its retention window."""

from __future__ import annotations

import time

from openalgo_events.inbound import HandledStore


def test_handled_ids_survive_a_restart(tmp_path):
    """An id recorded before close is seen after reopening the same file."""
    path = str(tmp_path / "state.db")
    store = HandledStore(path, "group")
    store.add("e1")
    store.close()
    reopened = HandledStore(path, "group")
    assert reopened.seen("e1") and not reopened.seen("e2")
    reopened.close()


def test_groups_are_separate(tmp_path):
    """Another consumer group sharing the file has not handled the id."""
    path = str(tmp_path / "state.db")
    a, b = HandledStore(path, "a"), HandledStore(path, "b")
    a.add("e1")
    assert a.seen("e1") and not b.seen("e1")


def test_ids_older_than_the_retention_are_forgotten(tmp_path):
    """Purging removes ids handled before the window; younger ones stay."""
    store = HandledStore(str(tmp_path / "state.db"), "group", retention_seconds=60)
    store.add("old")
    store.add("new")
    assert store.purge_expired(now=time.time() + 3600) == 2
    store.add("new")
    assert store.purge_expired() == 0
    assert store.seen("new") and not store.seen("old")
