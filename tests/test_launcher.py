"""`exburn-tf run`: workers with their TF_CONFIG, prefixed output, group restarts, signals.

The fast tests run small Python workers (no TensorFlow) through `launcher.Launcher` in this
process, so a SIGTERM to the launcher is a SIGTERM to this process; one slow test runs a
real two-worker MultiWorkerMirroredStrategy job through `exburn-tf run`.
"""
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from exburn_tf import cli
from exburn_tf import launcher
from worker_model import assert_same_weights

HERE = os.path.dirname(os.path.abspath(__file__))

# argv: OUT_DIR PLAN. Each worker records its environment in OUT_DIR/start-INDEX-RESTART,
# waits for the other workers of its attempt (as a real job connects first), then does what
# PLAN (JSON) says for "INDEX-RESTART" or "INDEX": "exit N", "kill" (SIGKILL itself),
# "hang", "ignore-term" (hang, ignoring SIGTERM) or "partial-lines"; default "exit 0".
# On SIGTERM it writes OUT_DIR/term-INDEX-RESTART and exits 143.
WORKER = textwrap.dedent("""
    import json, os, signal, sys, time
    out, plan = sys.argv[1], json.loads(sys.argv[2])
    index, restart = os.environ["EXBURN_TF_WORKER"], os.environ["EXBURN_TF_RESTART"]
    me = index + "-" + restart

    def on_term(signum, frame):
        open(os.path.join(out, "term-" + me), "w").close()
        sys.exit(143)

    signal.signal(signal.SIGTERM, on_term)
    names = ("TF_CONFIG", "EXBURN_TF_WORKER", "EXBURN_TF_NUM_WORKERS", "EXBURN_TF_RESTART")
    action = plan.get(me, plan.get(index, "exit 0")).split()
    if action[0] == "ignore-term":  # before "started" is announced: no race with the signal
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(os.path.join(out, "start-" + me), "w") as handle:
        json.dump({name: os.environ[name] for name in names}, handle)
    peers = [os.path.join(out, f"start-{i}-{restart}")
             for i in range(int(os.environ["EXBURN_TF_NUM_WORKERS"]))]
    deadline = time.monotonic() + 10
    while not all(map(os.path.exists, peers)) and time.monotonic() < deadline:
        time.sleep(0.01)
    if action[0] == "exit":
        sys.exit(int(action[1]))
    if action[0] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action[0] in ("hang", "ignore-term"):
        time.sleep(30)
    if action[0] == "partial-lines":
        for line in range(20):
            for part in ("first half ", "second half ", f"of line {line} of worker {index}"):
                sys.stdout.write(part)
                sys.stdout.flush()
                time.sleep(0.002)
            sys.stdout.write("\\n")
        print("to stderr", file=sys.stderr)
        sys.stdout.write("no newline at the end")
""")


def _launch(tmp_path, workers, plan=None, **options):
    """Runs the WORKER job in this process; returns (status, stdout text, stderr text)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    command = [sys.executable, "-c", WORKER, str(tmp_path), json.dumps(plan or {})]
    options.setdefault("grace_seconds", 2.0)
    job = launcher.Launcher(command, workers, stdout=stdout, stderr=stderr, **options)
    status = job.run()
    return status, stdout.getvalue(), stderr.getvalue()


def _starts(tmp_path):
    """{(index, restart): environment the worker saw}, from the start-* files."""
    starts = {}
    for path in tmp_path.glob("start-*"):
        index, restart = path.name.split("-")[1:]
        starts[int(index), int(restart)] = json.loads(path.read_text())
    return starts


def _terminated(tmp_path):
    """{(index, restart)} of the workers that received SIGTERM."""
    return {tuple(int(part) for part in path.name.split("-")[1:])
            for path in tmp_path.glob("term-*")}


def test_workers_get_distinct_tf_config_on_loopback(tmp_path):
    status, _, _ = _launch(tmp_path, workers=3)
    assert status == 0
    starts = _starts(tmp_path)
    assert sorted(starts) == [(0, 0), (1, 0), (2, 0)]
    configs = [json.loads(starts[index, 0]["TF_CONFIG"]) for index in range(3)]
    addresses = configs[0]["cluster"]["worker"]
    hosts, ports = zip(*(address.split(":") for address in addresses))
    assert hosts == ("127.0.0.1",) * 3
    assert len(set(ports)) == 3 and all(1024 <= int(port) <= 65535 for port in ports)
    for index, config in enumerate(configs):
        assert config == {"cluster": {"worker": addresses},
                          "task": {"type": "worker", "index": index}}
        assert starts[index, 0]["EXBURN_TF_WORKER"] == str(index)
        assert starts[index, 0]["EXBURN_TF_NUM_WORKERS"] == "3"
        assert starts[index, 0]["EXBURN_TF_RESTART"] == "0"


def test_output_is_prefixed_and_never_mixes_partial_lines(tmp_path):
    status, stdout, stderr = _launch(tmp_path, workers=2, plan={"0": "partial-lines",
                                                                "1": "partial-lines"})
    assert status == 0
    lines = stdout.splitlines()
    for index in range(2):
        expected = [f"[worker {index}] first half second half of line {line} of worker {index}"
                    for line in range(20)]
        expected.append(f"[worker {index}] no newline at the end")
        assert [line for line in lines if line.startswith(f"[worker {index}] ")] == expected
    assert len(lines) == 42
    assert stderr.splitlines().count("[worker 0] to stderr") == 1
    assert stderr.splitlines().count("[worker 1] to stderr") == 1


def test_a_failed_worker_restarts_the_whole_group(tmp_path):
    status, _, stderr = _launch(tmp_path, workers=2, plan={"0-0": "hang", "1-0": "exit 3"})
    assert status == 0
    starts = _starts(tmp_path)
    assert sorted(starts) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    # Worker 0 was stopped with SIGTERM, then both started again on fresh ports.
    assert _terminated(tmp_path) == {(0, 0)}
    first, second = (json.loads(starts[0, restart]["TF_CONFIG"])["cluster"]["worker"]
                     for restart in (0, 1))
    assert set(first).isdisjoint(second)
    assert starts[1, 1]["EXBURN_TF_RESTART"] == "1"
    assert "worker 1 exited with status 3; stopping the others" in stderr
    assert "restarting all 2 workers (restart 1 of 3)" in stderr


def test_restarts_used_up_exit_with_the_failing_status(tmp_path):
    status, _, stderr = _launch(tmp_path, workers=2, plan={"1": "exit 7"}, max_restarts=2)
    assert status == 7
    assert sorted(_starts(tmp_path)) == [(i, r) for i in range(2) for r in range(3)]
    assert "giving up after 2 restart(s); exiting with status 7" in stderr


def test_a_worker_killed_by_sigkill_restarts_the_group(tmp_path):
    status, _, stderr = _launch(tmp_path, workers=2, plan={"0-0": "kill"})
    assert status == 0
    assert sorted(_starts(tmp_path)) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert "worker 0 exited with signal SIGKILL (status 137)" in stderr


def test_a_signal_death_without_restarts_left_exits_128_plus_the_signal(tmp_path):
    status, _, _ = _launch(tmp_path, workers=2, plan={"1": "kill"}, max_restarts=0)
    assert status == 128 + signal.SIGKILL


def _signal_this_process_when_started(tmp_path, workers, signum=signal.SIGTERM):
    """Sends `signum` to this process (the launcher) once every worker has started."""
    def send():
        deadline = time.monotonic() + 10
        while len(list(tmp_path.glob("start-*"))) < workers and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signum)
    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_launcher_stops_the_workers_without_restart(tmp_path, signum):
    before = signal.getsignal(signum)
    sender = _signal_this_process_when_started(tmp_path, workers=2, signum=signum)
    status, _, stderr = _launch(tmp_path, workers=2, plan={"0": "hang", "1": "hang"})
    sender.join()
    assert status == 128 + signum  # 143 for SIGTERM, 130 for SIGINT
    # The workers got SIGTERM in both cases, and were not started again.
    assert _terminated(tmp_path) == {(0, 0), (1, 0)}
    assert sorted(_starts(tmp_path)) == [(0, 0), (1, 0)]
    assert f"received {signum.name}; stopped the workers, not restarting" in stderr
    assert signal.getsignal(signum) is before


def test_a_worker_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path):
    sender = _signal_this_process_when_started(tmp_path, workers=2)
    started = time.monotonic()
    status, _, stderr = _launch(tmp_path, workers=2, plan={"0": "ignore-term", "1": "hang"},
                                grace_seconds=0.5)
    sender.join()
    assert status == 143
    assert time.monotonic() - started < 10
    assert _terminated(tmp_path) == {(1, 0)}
    assert "worker 0 still running 0.5 s after SIGTERM; sending SIGKILL" in stderr


@pytest.mark.parametrize("arguments, message", [
    (["--workers", "0", "--", "true"], "argument --workers: must be an integer >= 1; "
                                       "received '0'"),
    (["--workers", "two", "--", "true"], "argument --workers: must be an integer >= 1; "
                                         "received 'two'"),
    (["--workers", "2", "--max-restarts", "-1", "--", "true"],
     "argument --max-restarts: must be an integer >= 0; received '-1'"),
    (["--workers", "2", "--grace-seconds", "-5", "--", "true"],
     "argument --grace-seconds: must be a number >= 0; received '-5'"),
    (["--workers", "2"], "missing COMMAND: give the worker command after '--'"),
    (["--", "true"], "the following arguments are required: --workers"),
])
def test_bad_arguments_exit_2_naming_the_option(arguments, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", *arguments])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_launcher_arguments_are_checked():
    with pytest.raises(ValueError, match=r"`workers` must be at least 1. Received: workers=0"):
        launcher.Launcher(["true"], 0)
    with pytest.raises(ValueError, match=r"`command` must be a non-empty list"):
        launcher.Launcher([], 2)
    with pytest.raises(ValueError, match=r"Received: max_restarts=-1"):
        launcher.Launcher(["true"], 2, max_restarts=-1)


def test_cli_run_streams_the_workers_and_exits_with_their_status(capsys):
    status = cli.main(["run", "--workers", "2", "--max-restarts", "0", "--",
                       sys.executable, "-c", "import os, sys; print('hello'); "
                       "sys.exit(int(os.environ['EXBURN_TF_WORKER']) * 5)"])
    assert status == 5
    captured = capsys.readouterr()
    assert sorted(captured.out.splitlines()) == ["[worker 0] hello", "[worker 1] hello"]
    assert "worker 1 exited with status 5" in captured.err


def test_cli_run_of_a_missing_command_exits_127(capsys):
    status = cli.main(["run", "--workers", "2", "--", "/nonexistent/worker-command"])
    assert status == 127
    assert "cannot start '/nonexistent/worker-command'" in capsys.readouterr().err


@pytest.mark.slow
def test_a_real_multi_worker_job_restarts_and_trains(tmp_path):
    """Two MultiWorkerMirroredStrategy workers through `python -m exburn_tf run`.

    Worker 1 fails at once on the first start; the group restarts on fresh ports, both
    workers train and end with the same weights.
    """
    worker = os.path.join(HERE, "distribute_worker.py")
    fail_first = ('[ "$EXBURN_TF_WORKER$EXBURN_TF_RESTART" = 10 ] && exit 3; '
                  'exec "$0" "$@"')
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join([os.path.dirname(HERE)] + sys.path))
    env.pop("TF_CONFIG", None)
    done = subprocess.run(
        [sys.executable, "-m", "exburn_tf", "run", "--workers", "2", "--grace-seconds", "5",
         "--", "sh", "-c", fail_first, sys.executable, worker, str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "worker 1 exited with status 3" in done.stderr
    assert "restarting all 2 workers (restart 1 of 3)" in done.stderr
    assert "[worker 0] Epoch 3/3" in done.stdout
    assert_same_weights(tmp_path / "worker1.npz", tmp_path / "worker0.npz")
    history = json.loads((tmp_path / "worker0.json").read_text())
    assert [epoch["epoch"] for epoch in history] == [1, 2, 3]
    assert history[-1]["loss"] < history[0]["loss"]


@pytest.mark.slow
def test_a_job_killed_again_and_again_under_the_launcher_ends_bit_identical(tmp_path):
    """Issue 13 end to end: two MultiWorkerMirroredStrategy workers under `exburn-tf run`
    with step checkpoints and resume=True. Attempt 0: worker 1 gets SIGTERM at step 4
    (both checkpoint at one step and exit as preempted); attempt 1: worker 0 is SIGKILLed
    at step 8. The launcher restarts the group each time; it resumes from the checkpoint
    and ends with the weights of an uninterrupted run of the same job, bit for bit."""
    worker = os.path.join(HERE, "preempt_worker.py")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join([os.path.dirname(HERE)] + sys.path))
    env.pop("TF_CONFIG", None)

    def job(out, *extra):
        out.mkdir()
        return subprocess.run(
            [sys.executable, "-m", "exburn_tf", "run", "--workers", "2", "--max-restarts",
             "3", "--grace-seconds", "5", "--", sys.executable, worker, str(out),
             "--resume", "--step-sleep", "0.05", *extra],
            env=env, capture_output=True, text=True, timeout=600)

    reference = job(tmp_path / "reference")
    assert reference.returncode == 0, reference.stdout[-3000:] + reference.stderr[-3000:]
    killed = job(tmp_path / "run", "--self-signal", "0:1:TERM:4,1:0:KILL:8")
    log = killed.stdout[-3000:] + killed.stderr[-3000:]
    assert killed.returncode == 0, log
    assert "restarting all 2 workers (restart 1 of 3)" in killed.stderr, log
    assert "restarting all 2 workers (restart 2 of 3)" in killed.stderr, log
    assert "restart 3 of 3" not in killed.stderr, log
    stops = [line.split("preempted at step ")[1] for line in killed.stdout.splitlines()
             if "preempted at step " in line]
    assert len(stops) >= 2 and len(set(stops[:2])) == 1, log  # both workers, one step
    steps = [int(s) for s in (tmp_path / "run" / "steps0.log").read_text().split()]
    assert any(later <= earlier for earlier, later in zip(steps, steps[1:])), \
        "no attempt resumed from a checkpoint before the step it had reached"
    for index in range(2):
        assert_same_weights(tmp_path / "run" / f"worker{index}.npz",
                            tmp_path / "reference" / "worker0.npz")
