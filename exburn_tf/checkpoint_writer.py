"""`AsyncWriter`: checkpoint files written by a background thread (SPEC §12).

    training thread:  snapshot (host copies, cheap) ─► writer.submit(commit of it)
    writer thread:    write files ─► fsync ─► rename (atomic) ─► prune

At most one write is in flight: `submit` first waits for the previous one. An error of
the writer is raised on the training thread by the next `submit` or by `wait`, which
`fit` calls before it returns or raises. Atomicity is the commit's own (staging folder +
rename): a kill during a write leaves the previous checkpoint complete.
"""

import threading


class AsyncWriter:
    """Runs one checkpoint write at a time on a background thread."""

    def __init__(self):
        self._thread = None
        self._error = None
        self.last_path = None

    def submit(self, write):
        """Starts `write()` (returns the checkpoint's path) once the previous one is done."""
        self.wait()
        self._thread = threading.Thread(target=self._run, args=(write,),
                                        name="exburn-checkpoint-writer", daemon=True)
        self._thread.start()

    def _run(self, write):
        try:
            self.last_path = write()
        except BaseException as error:  # noqa: BLE001 - re-raised on the training thread
            self._error = error

    def wait(self):
        """Waits for the write in flight; returns the last path written.

        Raises:
            The writer's error (e.g. `OSError` for a full disk), once.
        """
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return self.last_path
