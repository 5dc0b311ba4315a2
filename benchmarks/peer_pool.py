"""The peer workers of bench_peers.py: one long-lived process per contender.

A worker is started on first use and then answers one JSON request per line. Only one
worker computes at a time (the others wait on their stdin), so the contenders never
compete for the cores. A worker's stderr (TensorFlow's logging) goes to a temporary
file, shown only when the worker fails.
"""

import json
import os
import subprocess
import sys
import tempfile


class Pool:
    """`ask(contender, request)` -> the worker's JSON answer (a dict with "error" on failure).

    A worker is `python WORKER_SCRIPT --contender NAME --serve EXTRA_ARGS...`.
    """

    def __init__(self, worker_script, extra_args=()):
        self.worker_script, self.extra_args = worker_script, list(extra_args)
        self.workers = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _start(self, contender):
        log = tempfile.TemporaryFile(prefix=f"peer_{contender}_")
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
        process = subprocess.Popen(
            [sys.executable, self.worker_script, "--contender", contender, "--serve",
             *self.extra_args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        self.workers[contender] = (process, log)
        return process

    def ask(self, contender, request):
        process = self.workers[contender][0] if contender in self.workers else (
            self._start(contender))
        if process.poll() is not None:
            return {"contender": contender, "error": "the worker has exited"}
        process.stdin.write(json.dumps(request) + "\n")
        process.stdin.flush()
        line = process.stdout.readline()  # blocks while the worker's fit call runs
        if not line:
            process.wait()
            return {"contender": contender,
                    "error": f"the worker died (exit {process.returncode}):\n"
                             + self.log_tail(contender)}
        return json.loads(line)  # an "error" answer carries the exception's own message

    def log_tail(self, contender, characters=1500):
        # pread: the worker shares the file's offset and may still be writing to it.
        fd = self.workers[contender][1].fileno()
        size = os.fstat(fd).st_size
        start = max(0, size - characters)
        return os.pread(fd, size - start, start).decode(errors="replace")

    def close(self):
        for process, log in self.workers.values():
            if process.poll() is None:
                process.stdin.close()  # EOF: the worker's request loop ends
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            log.close()
        self.workers = {}
