"""This process's journal: what makes ``publish`` durable at the cost of one ``pwrite``.

Each record is framed (``spool.format``) and written into the current segment before
``publish`` returns: the bytes are then in the kernel's page cache, so a crash of the process
(kill -9) loses nothing. Segments are preallocated (``posix_fallocate``), so a full disk is an
error when a segment is created, never later. Writes go through ``pwrite``, never a mapping:
a segment truncated under us is then something to repair, not a SIGBUS that kills the app.

Repair (``check``, called about once a second while events wait): the writer keeps every
segment the relay has not acknowledged open, and the current segment's bytes in memory. When
its directory, a segment, or the current segment's contents are gone (deleted, replaced or
truncated by a temporary-file cleaner, an operator, a full-disk script), it writes the records
the relay has not acknowledged again into a new segment, from those descriptors and that
memory. Records keep their ``seq``, so the relay skips what it already acknowledged: nothing is
lost and nothing sent twice. (A sealed segment's bytes are not kept in memory: a sealed segment
truncated before the relay read it loses the records past the cut; the relay reports how many.)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
from collections.abc import Callable
from typing import Any

from ..errors import SpoolError
from ..spool import format as fmt
from ..spool.directory import SpoolDirectory

log = logging.getLogger("openalgo_events.journal")


class JournalWriter:
    """Appends this process's records to ``writers/<name>/`` of a spool.

    >>> journal = JournalWriter(SpoolDirectory("spool"))  # doctest: +SKIP
    >>> journal.append([...], b"{...}")  # doctest: +SKIP
    1

    Not thread-safe: the caller holds a lock around ``append``, ``check`` and ``close``.
    Raises ``SpoolError`` (path and fix) when the journal cannot be created.
    """

    def __init__(self, spool: SpoolDirectory, *, sync: bool = False,
                 segment_bytes: int | None = None) -> None:
        self.spool = spool
        self.sync = sync
        self.segment_bytes = segment_bytes or fmt.SEGMENT_BYTES
        self.name = fmt.writer_name()
        self.seq = 0  # the last record's sequence number
        self.repairs = 0  # times damage was found and the unacknowledged records written again
        self._writers = SpoolDirectory.at(spool, fmt.WRITERS)
        self._dir: SpoolDirectory | None = None
        self._lock_fd = -1
        self._number = 0  # the current segment's number
        self._fd = -1  # the current segment
        self._offset = 0
        self._capacity = 0
        self._current = bytearray()  # the current segment's bytes, to write again if damaged
        self._current_last = 0  # the largest seq in the current segment
        # sealed segments the relay may still need: number -> (descriptor, bytes written,
        # largest seq in it, bytes reserved)
        self._sealed: dict[int, tuple[int, int, int, int]] = {}
        # A segment could not be made: every append tries again, even one that would fit in
        # what is left of the current one, so that refusals do not come and go with sizes.
        self._stuck = False
        self._create()

    # -- creation -------------------------------------------------------------------------------
    def _create(self) -> None:
        """The writer's directory, made under a hidden name with its lock held and its first
        segment made, then renamed into place; on failure nothing is left behind."""
        hidden = f".{self.name}"
        try:
            self._writers.mkdir(hidden)
        except FileExistsError:
            pass
        except OSError as exc:
            raise _not_stored(os.path.join(self._writers.path, hidden), exc) from exc
        try:
            directory = SpoolDirectory.at(self._writers, hidden, create=False)
            lock_fd = directory.open(fmt.WRITER_LOCK, os.O_RDWR, create=True)
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new name: nobody else has it
            self._dir, self._lock_fd = directory, lock_fd
            self._open_segment(1, 0)
            self._writers.rename(hidden, self.name)  # the lock and descriptors go with it
            directory.path = os.path.join(self._writers.path, self.name)
        except BaseException as exc:
            self._close_files(keep_parent=True)
            self._writers.remove_tree(hidden)
            self._writers.close()
            if isinstance(exc, OSError):
                raise _not_stored(os.path.join(self._writers.path, self.name), exc) from exc
            raise

    def _open_segment(self, number: int, needed: int) -> None:
        """Make segment ``number`` (its blocks reserved) and write into it from now on. The
        previous one stays open, sealed, until the relay acknowledges it."""
        assert self._dir is not None
        capacity = max(self.segment_bytes, needed)
        name = fmt.segment_name(number)
        try:
            fd = self._dir.open(name, os.O_RDWR | os.O_TRUNC, create=True)
        except OSError as exc:
            raise _not_stored(os.path.join(self._dir.path, name), exc) from exc
        try:
            os.posix_fallocate(fd, 0, capacity)
        except OSError as exc:
            os.close(fd)
            self._dir.unlink(name)
            raise _not_stored(os.path.join(self._dir.path, name), exc) from exc
        if self._fd >= 0:
            self._sealed[self._number] = (self._fd, self._offset, self._current_last,
                                          self._capacity)
        self._number, self._fd, self._offset, self._capacity = number, fd, 0, capacity
        self._current, self._current_last = bytearray(), 0

    # -- the publish path -----------------------------------------------------------------------
    def append(self, meta: list[Any], value: bytes) -> int:
        """Write one record (``meta`` without its seq, which this fills in); its seq. Raises
        ``SpoolError`` when it could not be written: then nothing was."""
        seq = self.seq + 1
        frame = fmt.encode([seq, *meta], value)
        if os.fstat(self._fd).st_size < self._capacity:
            # Truncated under us: write no further into it (our next write would extend it
            # again and hide the cut); its records go again into a new segment.
            self._move_current()
        if self._stuck or self._offset + len(frame) > self._capacity:
            self._stuck = True
            self._open_segment(self._number + 1, len(frame))
            self._stuck = False
        start = self._offset
        try:
            written = os.pwrite(self._fd, frame, start)
        except OSError as exc:
            raise self._write_error(exc) from exc
        if written != len(frame):  # past a truncated end, on a full disk: nothing readable
            raise self._write_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
        self._offset += len(frame)
        self._current += frame
        self.seq = self._current_last = seq
        if self.sync:
            try:
                os.fdatasync(self._fd)
            except OSError as exc:
                # In the file but maybe not on disk: spoil its CRC so the relay skips it (as a
                # corrupt frame) rather than send an event publish reports as not stored.
                with contextlib.suppress(OSError):
                    os.pwrite(self._fd, b"\xff\xff\xff\xff", start + 4)
                raise self._write_error(exc) from exc
        return seq

    def _move_current(self) -> None:
        """Write the current segment's records again into a new one (the old is truncated)."""
        frames = bytes(self._current)
        number = self._number
        self._open_segment(number + 1, len(frames))
        held = self._sealed.pop(number, None)
        if held is not None:
            os.close(held[0])
        if frames:
            os.pwrite(self._fd, frames, 0)
        self._offset = len(frames)
        self._current += frames
        self._current_last = frame_seq_max(frames)
        self.repairs += 1
        log.error("journal segment %s was truncated under the app (a temporary-file "
                  "cleaner?); its records were written again into segment %s, so nothing is "
                  "lost. Keep %s out of any cleaner's reach", self._segment_path(number),
                  self._number, self.spool.path)

    def _write_error(self, exc: OSError) -> SpoolError:
        return SpoolError(f"journal segment {self._segment_path(self._number)} cannot be "
                          f"written ({exc.strerror}); {_fix(exc)}")

    # -- repair ---------------------------------------------------------------------------------
    def check(self, acked: Callable[[], int]) -> bool:
        """Find damage and repair it (see the module's docstring); close sealed segments whose
        records are all acknowledged (``acked()``: the ledger's acknowledged seq for this
        writer, read again before a missing segment counts as damage, since the relay prunes
        what it acknowledged). Whether it repaired anything. Raises ``SpoolError`` when the
        repair itself cannot be written."""
        acked_seq = acked()
        self._release_acknowledged(acked_seq)
        assert self._dir is not None
        if self._writers.gone() or self._dir.gone():
            lost = [*self._sealed, self._number]
            self._recreate_directory()
        else:
            lost = self._damaged()
            if lost:
                acked_seq = acked()
                self._release_acknowledged(acked_seq)
                lost = self._damaged()
        if not lost:
            return False
        records = self._unacknowledged(lost, acked_seq)
        self._open_segment(self._number + 1, 0)
        for number in lost:
            held = self._sealed.pop(number, None)
            if held is not None:
                os.close(held[0])
        for frame in records:
            if self._offset + len(frame) > self._capacity:
                self._open_segment(self._number + 1, len(frame))
            os.pwrite(self._fd, frame, self._offset)
            self._offset += len(frame)
            self._current += frame
            self._current_last = max(self._current_last, int(frame_seq(frame)))
        if self.sync:
            os.fdatasync(self._fd)
        self.repairs += 1
        log.error("journal %s was damaged (segments %s deleted, replaced or truncated: a "
                  "temporary-file cleaner?); its %s records not yet acknowledged were written "
                  "again into segment %s, so nothing is lost. Keep %s out of any cleaner's "
                  "reach", self._dir.path, lost, len(records), self._number, self.spool.path)
        return True

    def _damaged(self) -> list[int]:
        lost = [n for n, (fd, written, _, reserved) in self._sealed.items()
                if not self._intact(n, fd, written, reserved)]
        if not self._intact(self._number, self._fd, self._offset, self._capacity):
            lost.append(self._number)
        return lost

    def _intact(self, number: int, fd: int, written: int, reserved: int) -> bool:
        """Whether segment ``number`` is still the file we hold, with all we wrote into it: a
        truncation shows even after later writes extended the file again, as blocks missing
        from what was reserved (the cut-off part is a hole)."""
        assert self._dir is not None
        try:
            named = os.stat(fmt.segment_name(number), dir_fd=self._dir.fd,
                            follow_symlinks=False)
        except FileNotFoundError:
            return False
        held = os.fstat(fd)
        if held.st_nlink == 0 or (named.st_ino, named.st_dev) != (held.st_ino, held.st_dev):
            return False
        return held.st_size >= written and held.st_blocks * 512 >= reserved

    def _unacknowledged(self, numbers: list[int], acked_seq: int) -> list[bytes]:
        """The frames of these segments with a seq past ``acked_seq``, in order."""
        found: list[bytes] = []
        for number in numbers:
            if number == self._number:
                data = bytes(self._current)
            else:
                fd = self._sealed[number][0]
                data = os.pread(fd, os.fstat(fd).st_size, 0)
            for _start, _end, payload in fmt.frames(data):
                try:
                    meta, value = fmt.decode(payload)
                except ValueError:
                    continue
                if meta[fmt.SEQ] > acked_seq:
                    found.append(fmt.encode(meta, value))
        return found

    def _recreate_directory(self) -> None:
        """Our directory was deleted: make it again, same name, with its lock (the relay's
        ledger knows this name; records it acknowledged are skipped)."""
        assert self._dir is not None
        old_lock = self._lock_fd
        self._dir.close()
        self._writers.close()
        self._writers = SpoolDirectory.at(self.spool, fmt.WRITERS)  # may be gone too
        try:
            self._writers.mkdir(self.name)
        except FileExistsError:
            pass
        except OSError as exc:
            raise _not_stored(os.path.join(self._writers.path, self.name), exc) from exc
        self._dir = SpoolDirectory.at(self._writers, self.name, create=False)
        lock_fd = self._dir.open(fmt.WRITER_LOCK, os.O_RDWR, create=True)
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._lock_fd = lock_fd
        with contextlib.suppress(OSError):
            os.close(old_lock)

    def _release_acknowledged(self, acked_seq: int) -> None:
        """Close sealed segments the relay is done with: their last record is acknowledged."""
        for number in sorted(self._sealed):
            fd, _written, last, _reserved = self._sealed[number]
            if last > acked_seq:
                break
            os.close(fd)
            del self._sealed[number]

    # -- lifecycle ------------------------------------------------------------------------------
    def _segment_path(self, number: int) -> str:
        assert self._dir is not None
        return os.path.join(self._dir.path, fmt.segment_name(number))

    @property
    def path(self) -> str:
        assert self._dir is not None
        return self._dir.path

    def close(self) -> None:
        """Release the journal (the relay delivers what it holds): descriptors and lock."""
        self._close_files()

    def forget(self) -> None:
        """In a forked child: drop the parent's descriptors without touching its files (a
        flock lives on in the parent's descriptor)."""
        self._close_files()

    def _close_files(self, keep_parent: bool = False) -> None:
        for fd in [*(held[0] for held in self._sealed.values()), self._fd, self._lock_fd]:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._sealed.clear()
        self._fd = self._lock_fd = -1
        if self._dir is not None:
            self._dir.close()
        if not keep_parent:
            self._writers.close()


def frame_seq_max(frames: bytes) -> int:
    """The largest seq among a run of frames (0 for none)."""
    return max((fmt.decode(payload)[0][fmt.SEQ] for _s, _e, payload in fmt.frames(frames)),
               default=0)


def frame_seq(frame: bytes) -> int:
    """The seq of an encoded frame (the first number of its metadata array)."""
    start = fmt.HEADER.size + 1
    return int(frame[start:frame.index(b",", start)])


def _not_stored(path: str, exc: OSError) -> SpoolError:
    return SpoolError(f"spool journal {path} cannot be created ({exc.strerror}); {_fix(exc)}")


def _fix(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"free space on its volume (each segment takes {fmt.SEGMENT_BYTES} bytes); "
                "events already accepted stay in the spool")
    return ("give this process write access to the spool directory, or set KAFKA_SPOOL_PATH "
            "to a writable location")
