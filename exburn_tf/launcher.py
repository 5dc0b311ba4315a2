"""Local multi-worker jobs: N workers on 127.0.0.1, their output prefixed, the group restarted.

The rule, as `Launcher.run` applies it:

    for restart in 0, 1, ..., max_restarts:
        start N workers: fresh loopback ports, each its TF_CONFIG and EXBURN_TF_* variables
        wait until all exit 0, one exits non-zero, or the launcher gets SIGTERM / SIGINT
        stop the rest: SIGTERM, then SIGKILL after grace_seconds
        all exited 0        -> return 0
        launcher signalled  -> return 128 + signal number (no restart)
        a worker failed     -> restart the whole group (the workers resume from their
                               checkpoint themselves, with fit(resume=True))
    return the status of the last failing worker (128 + signal number for a signal death)

Each worker runs in its own session (process group), so a Ctrl-C in the terminal reaches
the launcher only, which then stops the workers as it does for SIGTERM. Signals go to a
worker's whole process group, so a wrapper script and what it starts stop together.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

LOOPBACK = "127.0.0.1"
MESSAGE_PREFIX = "exburn-tf run: "
# How often the launcher looks at its workers; also the delay before it notices a signal.
POLL_SECONDS = 0.05
# A reader can outlive its worker only if a grandchild left the process group holding the
# pipe; the launcher does not wait for such a reader longer than this.
READER_JOIN_SECONDS = 5.0

ENV_RESTART = "EXBURN_TF_RESTART"
ENV_WORKER = "EXBURN_TF_WORKER"
ENV_NUM_WORKERS = "EXBURN_TF_NUM_WORKERS"


def free_loopback_ports(count):
    """`count` distinct ports that were free on 127.0.0.1 a moment ago.

    All sockets are bound before any is closed, so the kernel hands out distinct ports.
    """
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((LOOPBACK, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def tf_config(ports, index):
    """The TF_CONFIG of worker `index` in a cluster of workers on 127.0.0.1:`ports`."""
    return {"cluster": {"worker": [f"{LOOPBACK}:{port}" for port in ports]},
            "task": {"type": "worker", "index": index}}


def worker_environment(base, ports, index, restart):
    """`base` plus TF_CONFIG, EXBURN_TF_WORKER / _NUM_WORKERS / _RESTART for one worker.

    PYTHONUNBUFFERED=1 is added unless `base` sets it, so that a Python worker's lines
    reach the launcher as they are printed, and are not lost in a buffer when it is killed.
    """
    env = dict(base)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env["TF_CONFIG"] = json.dumps(tf_config(ports, index))
    env[ENV_WORKER] = str(index)
    env[ENV_NUM_WORKERS] = str(len(ports))
    env[ENV_RESTART] = str(restart)
    return env


def exit_status(returncode):
    """A shell's exit status for a `Popen.returncode`: 128 + N for a death by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def describe_exit(returncode):
    """'status 3' or 'signal SIGKILL (status 137)', for messages."""
    if returncode >= 0:
        return f"status {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:  # a real-time signal has a number but no name
        name = str(-returncode)
    return f"signal {name} (status {exit_status(returncode)})"


class Output:
    """Whole lines to two text streams under one lock, so no two lines ever mix."""

    def __init__(self, stdout, stderr):
        self.stdout = stdout
        self.stderr = stderr
        self.lock = threading.Lock()

    def write_line(self, stream, line):
        with self.lock:
            stream.write(line + "\n")
            stream.flush()

    def message(self, text):
        """A line of the launcher's own, on stderr."""
        self.write_line(self.stderr, MESSAGE_PREFIX + text)

    def pump(self, pipe, stream, prefix):
        """Copies `pipe` (bytes) to `stream` line by line with `prefix`, until EOF.

        A last line without a newline is written with one.
        """
        with pipe:
            for raw in iter(pipe.readline, b""):
                self.write_line(stream, prefix + raw.decode("utf-8", "replace").rstrip("\r\n"))


class WorkerGroup:
    """N running worker processes of one attempt, with a reader thread per pipe."""

    def __init__(self, command, workers, restart, env, output):
        self.output = output
        self.processes = []
        self.readers = []
        ports = free_loopback_ports(workers)
        try:
            for index in range(workers):
                self._start_worker(command, worker_environment(env, ports, index, restart),
                                   index)
        except OSError:
            self.stop(grace_seconds=0)
            raise

    def _start_worker(self, command, env, index):
        process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   start_new_session=True)
        self.processes.append(process)
        prefix = f"[worker {index}] "
        for pipe, stream in ((process.stdout, self.output.stdout),
                             (process.stderr, self.output.stderr)):
            reader = threading.Thread(target=self.output.pump, args=(pipe, stream, prefix),
                                      name=f"exburn-tf-worker-{index}-output", daemon=True)
            reader.start()
            self.readers.append(reader)

    def wait(self, interrupted):
        """Waits until every worker exited 0, one exited non-zero, or `interrupted()`.

        Returns (index, returncode) of a failed worker (the lowest index among those found
        failed at once), or None.
        """
        while not interrupted():
            returncodes = [process.poll() for process in self.processes]
            for index, returncode in enumerate(returncodes):
                if returncode not in (None, 0):
                    return index, returncode
            if all(returncode == 0 for returncode in returncodes):
                return None
            time.sleep(POLL_SECONDS)
        return None

    def running(self):
        """Indexes of the workers that have not exited."""
        return [index for index, process in enumerate(self.processes)
                if process.poll() is None]

    def send(self, signum, indexes):
        """Sends `signum` to the process group of each worker in `indexes`."""
        for index in indexes:
            try:
                # A worker not yet reaped by poll() keeps its pid, so this pid is still ours.
                os.killpg(self.processes[index].pid, signum)
            except ProcessLookupError:
                pass

    def stop(self, grace_seconds):
        """SIGTERM to the running workers, SIGKILL to those still running after the grace."""
        self.send(signal.SIGTERM, self.running())
        deadline = time.monotonic() + grace_seconds
        while self.running() and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
        stragglers = self.running()
        if stragglers:
            names = ", ".join(str(index) for index in stragglers)
            self.output.message(f"worker {names} still running {grace_seconds:g} s after "
                                "SIGTERM; sending SIGKILL")
            self.send(signal.SIGKILL, stragglers)
        for process in self.processes:
            process.wait()
        for reader in self.readers:
            reader.join(READER_JOIN_SECONDS)


class Launcher:
    """Runs `command` as N local workers of one job and restarts the group when one fails.

    The rule is in this module's docstring. Call `run` from the main thread: it installs
    handlers for SIGTERM and SIGINT for its duration and restores the previous ones.

    Args:
        command: the worker command, a list of strings (run without a shell).
        workers: number of worker processes, at least 1.
        max_restarts: group restarts allowed after failures (default 3), at least 0.
        grace_seconds: seconds between SIGTERM and SIGKILL when stopping workers
            (default 30, the usual grace period of cluster schedulers), at least 0.
        env: the environment the workers' variables are added to (default `os.environ`).
        stdout, stderr: text streams for the workers' prefixed lines and the launcher's
            messages (default `sys.stdout`, `sys.stderr` at the time `run` is called).
    """

    def __init__(self, command, workers, max_restarts=3, grace_seconds=30.0, env=None,
                 stdout=None, stderr=None):
        if not command:
            raise ValueError(f"Argument `command` must be a non-empty list of strings. "
                             f"Received: command={command!r}")
        if workers < 1:
            raise ValueError(f"Argument `workers` must be at least 1. Received: workers={workers}")
        if max_restarts < 0:
            raise ValueError(f"Argument `max_restarts` must be at least 0. "
                             f"Received: max_restarts={max_restarts}")
        if grace_seconds < 0:
            raise ValueError(f"Argument `grace_seconds` must be at least 0. "
                             f"Received: grace_seconds={grace_seconds}")
        self.command = list(command)
        self.workers = workers
        self.max_restarts = max_restarts
        self.grace_seconds = grace_seconds
        self.env = env
        self.stdout = stdout
        self.stderr = stderr
        self.received_signal = None

    def run(self):
        """Runs the job to its end; returns its exit status (the rule in the module docstring).

        Raises:
            OSError: when the command cannot be started (not found, not executable).
        """
        self.received_signal = None
        handled = (signal.SIGTERM, signal.SIGINT)
        previous = {signum: signal.signal(signum, self._on_signal) for signum in handled}
        try:
            return self._run_attempts(Output(self.stdout or sys.stdout,
                                             self.stderr or sys.stderr))
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _on_signal(self, signum, frame):
        # Only a flag: the waiting loop sees it within POLL_SECONDS and stops the workers.
        self.received_signal = signum

    def _run_attempts(self, output):
        env = os.environ if self.env is None else self.env
        restart = 0
        while True:
            group = WorkerGroup(self.command, self.workers, restart, env, output)
            failure = group.wait(lambda: self.received_signal is not None)
            if failure is not None:
                output.message(f"worker {failure[0]} exited with {describe_exit(failure[1])}; "
                               "stopping the others")
            group.stop(self.grace_seconds)
            if self.received_signal is not None:
                name = signal.Signals(self.received_signal).name
                output.message(f"received {name}; stopped the workers, not restarting")
                return 128 + self.received_signal
            if failure is None:
                return 0
            if restart == self.max_restarts:
                status = exit_status(failure[1])
                output.message(f"giving up after {restart} restart(s); "
                               f"exiting with status {status}")
                return status
            restart += 1
            output.message(f"restarting all {self.workers} workers "
                           f"(restart {restart} of {self.max_restarts})")
