"""A spool's private directory: created 0700, files 0600, nothing followed, nothing shared.

A spool may live in a shared place (``/tmp``, a world-writable data directory), so every path
is opened relative to a directory descriptor that was checked once: owned by this user, a real
directory (``O_NOFOLLOW``), writable by nobody else. Files are created 0600 whatever the umask
and opened with ``O_NOFOLLOW``; a file owned by another user or writable by group or others is
refused with its path and the fix. Another local user can then read nothing, plant nothing,
hold no lock and ring no doorbell: they cannot even enter the directory.

Locks. The relay's and the keeper's are POSIX record locks, so ``lock_holder`` can name the
process holding one (F_GETLK) without taking it. A process must never open and close a lock
file it holds itself: closing any descriptor of a file releases the process's POSIX locks on
it (the relay and the keeper keep theirs open; only other processes ask ``lock_holder``).
Writers hold an ``flock`` instead (per open file, so a relay inside the same process, with
``KAFKA_SPOOL_PATH=:memory:``, still sees a live writer's lock).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import stat
import struct
from collections.abc import Iterator

from ..errors import SpoolError

_FLOCK = struct.Struct("@hhqqi4x")  # struct flock on Linux (x86_64, aarch64)
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


class SpoolDirectory:
    """One checked directory, used through its descriptor.

    >>> spool = SpoolDirectory("/var/lib/openalgo/spool", create=True)  # doctest: +SKIP
    >>> fd = spool.open("ledger", os.O_RDWR, create=True)  # doctest: +SKIP

    Raises ``SpoolError`` (path and fix) when the directory cannot be made or opened, is a
    symbolic link, belongs to another user, or is writable by group or others.
    """

    def __init__(self, path: str, *, create: bool = True, _fd: int | None = None) -> None:
        self.path = os.path.abspath(path)
        self.fd = _fd if _fd is not None else _open_dir(self.path, create)

    @classmethod
    def at(cls, parent: SpoolDirectory, name: str, *, create: bool = True) -> SpoolDirectory:
        """A subdirectory, checked the same way, opened relative to ``parent``."""
        return cls(os.path.join(parent.path, name), _fd=_open_dir(
            os.path.join(parent.path, name), create, parent.fd, name))

    def open(self, name: str, flags: int, *, create: bool = False) -> int:
        """A file of this directory, opened without following a link; created 0600. Raises
        ``OSError`` as ``open`` does (FileNotFoundError when absent and not ``create``), and
        ``SpoolError`` for a file that is not this user's alone."""
        fd = os.open(name, flags | _NOFOLLOW | (os.O_CREAT if create else 0), 0o600,
                     dir_fd=self.fd)
        try:
            _check(os.fstat(fd), os.path.join(self.path, name), regular=True)
            with contextlib.suppress(OSError):  # the mode without the umask's say
                if stat.S_IMODE(os.fstat(fd).st_mode) != 0o600:
                    os.fchmod(fd, 0o600)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def read(self, name: str) -> bytes | None:
        """A small file's bytes, or None when it is absent."""
        try:
            fd = self.open(name, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            return _read_all(fd)
        finally:
            os.close(fd)

    def listdir(self) -> list[str]:
        try:
            return os.listdir(self.fd)
        except FileNotFoundError:
            return []

    def exists(self, name: str) -> bool:
        try:
            os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def unlink(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self.fd)

    def rename(self, old: str, new: str, target: SpoolDirectory | None = None) -> None:
        os.rename(old, new, src_dir_fd=self.fd, dst_dir_fd=(target or self).fd)

    def remove_tree(self, name: str) -> None:
        """Delete a subdirectory and everything in it (never following a link)."""
        import shutil

        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(name, dir_fd=self.fd)

    def mkdir(self, name: str) -> None:
        os.mkdir(name, 0o700, dir_fd=self.fd)
        os.chmod(name, 0o700, dir_fd=self.fd, follow_symlinks=False)

    def proc_path(self, name: str) -> str:
        """A path naming ``name`` through this process's descriptor: short (a Unix socket's path
        is limited to 107 bytes) and immune to the directory being renamed meanwhile."""
        return f"/proc/self/fd/{self.fd}/{name}"

    def gone(self) -> bool:
        """Whether this directory was deleted (or moved away) since it was opened."""
        try:
            named = os.stat(self.path, follow_symlinks=False)
        except OSError:
            return True
        held = os.fstat(self.fd)
        return held.st_nlink == 0 or (named.st_ino, named.st_dev) != (held.st_ino, held.st_dev)

    def close(self) -> None:
        """Close the descriptor, once: its number goes back to the process, and a second close
        (a closed publisher's in a forked child) would close whatever reused it."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)


def _open_dir(path: str, create: bool, parent_fd: int | None = None,
              name: str | None = None) -> int:
    where = name if parent_fd is not None and name is not None else path
    made = False
    if create:
        try:
            os.mkdir(where, 0o700, dir_fd=parent_fd)
            made = True
        except FileExistsError:
            pass
        except FileNotFoundError as exc:
            raise SpoolError(f"spool directory {path} cannot be created: its parent "
                             f"{os.path.dirname(path)} does not exist; create it or set "
                             "KAFKA_SPOOL_PATH to a directory in an existing one") from exc
        except OSError as exc:
            raise SpoolError(f"spool directory {path} cannot be created ({exc.strerror}); "
                             f"{_fix(exc, os.path.dirname(path))}") from exc
    try:
        fd = os.open(where, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW, dir_fd=parent_fd)
    except FileNotFoundError as exc:
        raise SpoolError(f"no spool directory at {path}; pass --spool (or set "
                         "KAFKA_SPOOL_PATH) to the app's spool, as seen from this "
                         "directory") from exc
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise SpoolError(f"{path} is not a directory of its own (a symbolic link or a "
                             "file); remove it, or set KAFKA_SPOOL_PATH to a directory path "
                             "this user owns") from exc
        raise SpoolError(f"spool directory {path} cannot be opened ({exc.strerror}); "
                         f"{_fix(exc, path)}") from exc
    try:
        if made:
            os.fchmod(fd, 0o700)  # whatever the umask said
        _check(os.fstat(fd), path, regular=False)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check(st: os.stat_result, path: str, *, regular: bool) -> None:
    """Refuse what another user owns or can write: it could be read, forged or swapped."""
    kind = "file" if regular else "directory"
    if regular and not stat.S_ISREG(st.st_mode):
        raise SpoolError(f"{path} is not a regular file; remove it (the spool recreates it)")
    if st.st_uid != os.geteuid():
        raise SpoolError(f"spool {kind} {path} belongs to user id {st.st_uid}, not to this "
                         f"user ({os.geteuid()}): another user could read or forge its events. "
                         "Run the app as its owner, or set KAFKA_SPOOL_PATH to a directory "
                         "of this user's own")
    if st.st_mode & 0o022:
        raise SpoolError(f"spool {kind} {path} is writable by group or others (mode "
                         f"{stat.S_IMODE(st.st_mode):o}): another user could plant or change "
                         f"events. Run 'chmod {'600' if regular else '700'} {path}' if nobody "
                         "else wrote to it, or start a new spool elsewhere")


def _fix(exc: OSError, path: str) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"free space on the volume of {path}"
    return (f"give this user write access to {path}, or set KAFKA_SPOOL_PATH to a writable "
            "location")


def explain(exc: OSError, directory: str) -> str:
    """An ``OSError`` on a file of the spool as a sentence with its path and the fix."""
    name = exc.filename if isinstance(exc.filename, str) else ""
    path = os.path.join(directory, name) if name else directory
    if exc.errno in (errno.EISDIR, errno.ENOTDIR, errno.ELOOP):
        return (f"{path} is not a regular file; remove it (the spool makes it again; if it "
                "was a symbolic link, find out who put it there)")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"{path} cannot be written ({exc.strerror}); give this user write access to "
                f"{directory} and its files again")
    return f"{path}: {exc.strerror}; {_fix(exc, directory)}"


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


# -- locks ---------------------------------------------------------------------------------------
def posix_lock(fd: int) -> bool:
    """Take the POSIX write lock on the whole file (non-blocking); False when another process
    holds it."""
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            return False
        raise
    return True


def lock_holder(directory: SpoolDirectory, name: str) -> int | None:
    """The pid of the process holding the POSIX lock on ``name``, or None (unlocked, or no such
    file). Takes nothing: a relay starting meanwhile is never disturbed. Never call it from the
    process that holds the lock (see the module's docstring)."""
    try:
        fd = os.open(name, os.O_RDONLY | _NOFOLLOW, dir_fd=directory.fd)
    except OSError:
        return None
    try:
        found = fcntl.fcntl(fd, fcntl.F_GETLK, _FLOCK.pack(fcntl.F_WRLCK, 0, 0, 0, 0))
    except OSError:
        return None
    finally:
        os.close(fd)
    kind, _whence, _start, _len, pid = _FLOCK.unpack(found)
    return None if kind == fcntl.F_UNLCK else int(pid)


def flock_held(directory: SpoolDirectory, name: str) -> bool:
    """Whether some open file holds the flock on ``name`` (False when there is no such file). A
    free lock is taken and released at once: only a dead writer's lock is ever free."""
    try:
        fd = os.open(name, os.O_RDONLY | _NOFOLLOW, dir_fd=directory.fd)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


# -- doorbell ------------------------------------------------------------------------------------
class Bell:
    """The writer's side of the relay's doorbell: one datagram, never waiting, never raising.

    Connected once (a lookup of the socket's path per ring would cost more than the ring); a
    relay that restarted has a new socket, so a failed ring reconnects at the next one.
    """

    def __init__(self, directory: SpoolDirectory) -> None:
        self._address = directory.proc_path(_doorbell_name())
        self._sock: socket.socket | None = None

    def ring(self, message: bytes) -> None:
        try:
            if self._sock is None:
                # The unpatched module: under eventlet a green socket waits on the hub when the
                # queue is full, and the publisher rings while holding a real lock.
                from .._threads import real_module

                self._sock = real_module("socket").socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
                self._sock.connect(self._address)
            self._sock.send(message)
        except OSError:
            self.close()  # no relay yet, a new one, or its queue full: it looks anyway

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _doorbell_name() -> str:
    from .format import DOORBELL

    return DOORBELL


def bind_doorbell(directory: SpoolDirectory) -> socket.socket:
    """The relay's side: a datagram socket at ``doorbell``, 0600 (a stale one is replaced: the
    caller holds the relay lock). Raises ``OSError``."""
    name = _doorbell_name()
    directory.unlink(name)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(directory.proc_path(name))
        os.chmod(name, 0o600, dir_fd=directory.fd, follow_symlinks=False)
    except BaseException:
        sock.close()
        raise
    return sock


def walk_files(directory: SpoolDirectory) -> Iterator[tuple[str, os.stat_result]]:
    """(relative path, lstat) of every entry below ``directory`` (for tests and ``check``)."""
    for root, dirs, files, root_fd in os.fwalk(dir_fd=directory.fd):
        for name in dirs + files:
            yield (os.path.normpath(os.path.join(root, name)),
                   os.stat(name, dir_fd=root_fd, follow_symlinks=False))
