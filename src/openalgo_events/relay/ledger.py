"""The relay's record files: the ledger (its durable state) and its status (for health).

Both are ``spool.format`` record files, written in place: once made, writing one needs no disk
space and no write access to the directory, so a full disk or a read-only directory does not
stop the relay from recording its progress. A file deleted or replaced under the relay is made
again at its path from what the relay holds in memory. A write that still fails is a storage
fault (``faults``): retried with a backoff, never a reason to resend or to stop.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from ..spool import LedgerEntry
from ..spool import format as fmt
from ..spool.directory import SpoolDirectory
from .faults import StorageFaults


class RecordWriter:
    """One record file of the relay's, by its name in the spool (``ledger``, ``status``).

    Raises ``OSError`` or ``SpoolError`` when it cannot be created: the relay cannot use its
    spool and stops with the fix.
    """

    def __init__(self, spool: SpoolDirectory, name: str, faults: StorageFaults, *,
                 sync: bool = False) -> None:
        self.spool, self.name, self.faults, self.sync = spool, name, faults, sync
        self.path = os.path.join(spool.path, name)
        self._fd = spool.open(name, os.O_RDWR, create=True)
        self._file = fmt.RecordFile(self._fd, sync=sync)
        self.last: dict[str, Any] | None = None

    def read(self) -> dict[str, Any] | None:
        found = fmt.read_record(self._fd)
        return found[1] if found else None

    def write(self, body: dict[str, Any]) -> bool:
        """Write ``body`` (or keep it for the next try, during a fault); whether it is on
        disk now."""
        self.last = body
        if not self.faults.due(self.name):
            return False
        try:
            if self._replaced():
                self._reopen()
            self._file.write(body)
        except OSError as exc:
            self.faults.failed(self.name, self.path, exc)
            return False
        self.faults.ok(self.name)
        return True

    def _replaced(self) -> bool:
        held = os.fstat(self._fd)
        try:
            named = os.stat(self.name, dir_fd=self.spool.fd, follow_symlinks=False)
        except FileNotFoundError:
            return True
        return held.st_nlink == 0 or (named.st_ino, named.st_dev) != (held.st_ino, held.st_dev)

    def _reopen(self) -> None:
        """Made again at its path (deleted by a cleaner, replaced by hand): the content
        follows from memory at the write that comes next."""
        from ..errors import SpoolError

        self.spool.unlink(self.name)
        try:
            fd = self.spool.open(self.name, os.O_RDWR, create=True)
        except SpoolError as exc:
            raise OSError(str(exc)) from exc
        try:
            new = fmt.RecordFile(fd, sync=self.sync)
        except OSError:
            os.close(fd)
            raise
        with contextlib.suppress(OSError):
            os.close(self._fd)
        new.generation = self._file.generation
        self._fd, self._file = fd, new

    def close(self) -> None:
        fd, self._fd = self._fd, -1  # once: a second close would hit whatever reused it
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)


def ledger_positions(body: dict[str, Any] | None) -> dict[str, LedgerEntry]:
    found: dict[str, LedgerEntry] = {}
    for name, entry in ((body or {}).get("writers") or {}).items():
        with contextlib.suppress(TypeError, ValueError):
            found[name] = LedgerEntry(*(int(x) for x in entry[:5]))
    return found
