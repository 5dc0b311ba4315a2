"""The checkpoint folder: entry names, listing, the run lock, staging and pruning.

    <folder>/ckpt-000000000001 ...  complete checkpoints (n counts writes; 12 digits,
                                    zero-padded, more digits once n >= 10**12)
    <folder>/.tmp-*                 staging folders being written or pruned

Only real directories (not symlinks) with a canonical name holding a `meta.json` or
`ckpt.index` regular file are checkpoints: anything else in the folder is never read and never pruned. Names are
parsed with ASCII digits only and ordered numerically, so the order holds for the lifetime
of the folder.

The run lock is an `fcntl.flock` on the folder itself (an open directory descriptor, so no
lock file is left in the folder): the kernel drops it when its holder dies (SIGKILL
included), so a killed run never leaves the folder stuck. Within one process the lock is
shared: every writer of this process uses the same held lock, which is released once
nothing holds it any more (normally when `fit` returns) or at exit; writing threads take
turns through it.
"""

import errno
import fcntl
import os
import re
import shutil
import stat
import tempfile
import threading
import weakref

PREFIX = "ckpt"
STAGING_PREFIX = ".tmp-"
_DIGITS = 12
_NAME = re.compile(r"ckpt-([0-9]+)")


class CheckpointDirError(OSError, ValueError):
    """A checkpoint folder that cannot be used (unwritable, not a folder, or in use).

    Both an `OSError` (the file system refused) and a `ValueError` (the `checkpoint_dir`
    argument is unusable), so either `except` clause catches it.
    """


def name_of(number):
    """The entry name of checkpoint `number`: `ckpt-` + at least 12 digits."""
    return f"{PREFIX}-{number:0{_DIGITS}d}"


def number_of(name):
    """The number in a canonical checkpoint name, else None (`ckpt-1`, `ckpt-٣` are not)."""
    match = _NAME.fullmatch(name)
    if match is None:
        return None
    number = int(match.group(1))
    return number if name_of(number) == name else None


def _is_checkpoint(path):
    """True for a real directory (not a symlink) holding a file the library writes there:
    `meta.json` or `ckpt.index` (one of them may be lost to damage, which `read` reports)."""
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            return False
    except OSError:
        return False
    return any(_is_file(os.path.join(path, name)) for name in ("meta.json", PREFIX + ".index"))


def _is_file(path):
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def list_checkpoints(directory):
    """Complete checkpoints in `directory`, oldest first, as paths."""
    directory = os.fspath(directory)
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    numbered = sorted((number_of(n), n) for n in names if number_of(n) is not None)
    paths = [os.path.join(directory, n) for _, n in numbered]
    return [p for p in paths if _is_checkpoint(p)]


def next_name(directory):
    """The name of the next checkpoint: one past every canonical name present.

    Every entry counts, checkpoint or not (a symlink, a foreign folder), so the rename
    that commits a checkpoint never lands on an existing path.
    """
    numbers = [number_of(n) for n in os.listdir(directory)]
    return name_of(max((n for n in numbers if n is not None), default=0) + 1)


def prune(directory, keep):
    """Removes all but the newest `keep` checkpoints.

    Each one is first renamed into a staging name (atomic), then deleted, so a reader
    never sees a half-deleted checkpoint under its real name.
    """
    for old in list_checkpoints(directory)[:-keep]:
        doomed = tempfile.mkdtemp(prefix=STAGING_PREFIX + "prune-", dir=directory)
        os.rename(old, os.path.join(doomed, "old"))
        shutil.rmtree(doomed, ignore_errors=True)


def remove_stale_staging(directory):
    """Deletes staging folders left by a killed writer.

    Called by the lock holder only: no other process writes here, so every staging
    folder present is stale.
    """
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if name.startswith(STAGING_PREFIX) and os.path.isdir(path) and \
                not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)


def check_writable(directory, what="checkpoint_dir"):
    """Creates `directory` if needed and proves it writable; returns it as a str.

    Raises:
        CheckpointDirError: the path is below a file, is a file, or cannot be written.
    """
    directory = os.fspath(directory)
    try:
        os.makedirs(directory, exist_ok=True)
        probe = tempfile.mkdtemp(prefix=STAGING_PREFIX + "probe-", dir=directory)
        shutil.rmtree(probe, ignore_errors=True)  # a lock holder may have removed it already
    except OSError as error:
        raise CheckpointDirError(
            error.errno or errno.EIO,
            f"{what} {directory!r} cannot be used for checkpoints: "
            f"{error.strerror or error}") from None
    return directory


class _HeldLock:
    """One open, flock'ed folder descriptor; closing it (or dying) releases the lock.

    `with` it, the threads of this process take turns (a checkpoint written in the
    background and one written by a callback must not meet in the folder).
    """

    def __init__(self, descriptor):
        self._finalizer = weakref.finalize(self, os.close, descriptor)
        self._turn = threading.RLock()

    def __enter__(self):
        self._turn.acquire()
        return self

    def __exit__(self, *exc):
        """Ends this thread's turn; the lock itself lasts while any holder keeps a
        reference."""
        self._turn.release()


_held = weakref.WeakValueDictionary()  # realpath -> _HeldLock of this process
_held_guard = threading.Lock()


def lock(directory, what="checkpoint_dir"):
    """Takes the folder's run lock; returns a handle to keep (or use in `with`) while writing.

    Raises:
        CheckpointDirError: another live process holds the lock.
    """
    key = os.path.realpath(directory)
    with _held_guard:
        held = _held.get(key)
        if held is not None:
            return held
        descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(descriptor)
            if error.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                raise
            raise CheckpointDirError(
                errno.EBUSY,
                f"{what} {directory!r} is in use by another running job (a process that "
                "holds its lock); give each run its own checkpoint_dir") from None
        held = _held[key] = _HeldLock(descriptor)
        return held
