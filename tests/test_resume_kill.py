"""Never lose a run (SPEC §9): a training process SIGKILLed at random moments and resumed
ends with weights bit-identical to an uninterrupted run.

`resume_worker.py` trains with dropout, shuffling, accumulation, warmup, a cosine schedule,
clipping, weight decay and op determinism, checkpointing every epoch. The reference run goes
uninterrupted; the other is killed after its first checkpoint, at a random moment (mostly
mid-epoch: the worker sleeps after every step), and while a checkpoint is being written,
resumed with `resume=True` after each kill, until it completes.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "resume_worker.py")
STEP_SLEEP = 0.03
DEADLINE = 240.0  # seconds: only a guard against a hang (a run takes ~30 s)


def _start(out_dir, checkpoint_dir, resume, step_sleep=0.0):
    command = [sys.executable, WORKER, str(out_dir), str(checkpoint_dir),
               "--step-sleep", str(step_sleep)]
    if resume:
        command.append("--resume")
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _checkpoints(directory):
    if not os.path.isdir(directory):
        return set()
    return {n for n in os.listdir(directory) if n.startswith("ckpt-")}


def _staging(directory):
    if not os.path.isdir(directory):
        return set()
    return {n for n in os.listdir(directory) if n.startswith(".tmp-")}


def _wait_until(process, condition, deadline, poll=0.001):
    """Polls `condition` until it holds; False if the process ended first."""
    while not condition():
        if process.poll() is not None:
            return False
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("resume_worker did not make progress before the deadline")
        time.sleep(poll)
    return True


def _kill(process):
    """SIGKILL: no cleanup, no finally blocks, no flushing — as a crash or OOM kill."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait()
    return process.returncode == -signal.SIGKILL


def _finish(process, deadline):
    try:
        _, stderr = process.communicate(timeout=max(deadline - time.monotonic(), 1.0))
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("resume_worker did not finish before the deadline")
    assert process.returncode == 0, stderr.decode(errors="replace")[-3000:]


def _result(out_dir):
    assert os.path.exists(os.path.join(out_dir, "done"))
    names = sorted(n for n in os.listdir(out_dir) if n.endswith(".npy"))
    with open(os.path.join(out_dir, "history.json")) as handle:
        history = json.load(handle)
    return [np.load(os.path.join(out_dir, n)) for n in names], history


@pytest.mark.slow
def test_killed_and_resumed_run_is_bit_identical_to_an_uninterrupted_one(tmp_path):
    seed = int(os.environ.get("EXBURN_KILL_SEED", random.randrange(2**31)))
    rng = random.Random(seed)
    deadline = time.monotonic() + DEADLINE
    checkpoint_dir = tmp_path / "checkpoints"

    # The reference runs alongside the first, interrupted run.
    reference = _start(tmp_path / "reference", tmp_path / "reference_checkpoints", False)
    process = _start(tmp_path / "run", checkpoint_dir, False, STEP_SLEEP)

    kills = []
    # 1. At a random moment after the first checkpoint: mostly mid-epoch (the worker sleeps
    #    after every step), sometimes inside a checkpoint write.
    if _wait_until(process, lambda: _checkpoints(checkpoint_dir), deadline):
        time.sleep(rng.uniform(0.0, 0.4))
        kills.append(("random moment", _kill(process)))
    # 2. Resumed, then killed while its next checkpoint is being written (a staging
    #    directory exists), or right after, should the write be too quick to see.
    seen, leftovers = _checkpoints(checkpoint_dir), _staging(checkpoint_dir)
    process = _start(tmp_path / "run", checkpoint_dir, True, STEP_SLEEP)
    if _wait_until(process, lambda: _staging(checkpoint_dir) - leftovers
                   or _checkpoints(checkpoint_dir) - seen, deadline, poll=0.0002):
        writing = bool(_staging(checkpoint_dir) - leftovers)
        kills.append(("mid-write" if writing else "after a write", _kill(process)))
    # 3. Resumed until the run completes.
    assert not os.path.exists(tmp_path / "run" / "done")
    final = _start(tmp_path / "run", checkpoint_dir, True)
    _finish(final, deadline)
    _finish(reference, deadline)

    message = f"EXBURN_KILL_SEED={seed}, kills={kills}"
    assert sum(killed for _, killed in kills) >= 2, message
    expected_variables, expected_history = _result(tmp_path / "reference")
    variables, history = _result(tmp_path / "run")
    assert len(variables) == len(expected_variables), message
    for i, (value, expected) in enumerate(zip(variables, expected_variables)):
        assert value.dtype == expected.dtype, message
        assert np.array_equal(value, expected), f"variable {i} differs; {message}"
    assert history == expected_history, message
    # Each process went on from the last checkpoint: the final one did not start over.
    with open(tmp_path / "run" / "epochs.log") as handle:
        trained = [tuple(map(int, line.split())) for line in handle]
    final_epochs = [epoch for pid, epoch in trained if pid == final.pid]
    assert final_epochs and final_epochs[0] > 1, (trained, message)
    assert final_epochs == list(range(final_epochs[0], len(history) + 1)), (trained, message)


def _start_steps(out_dir, checkpoint_dir, resume, options, step_sleep=0.0):
    command = [sys.executable, WORKER, str(out_dir), str(checkpoint_dir),
               "--step-sleep", str(step_sleep), *options]
    if resume:
        command.append("--resume")
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _steps_logged(out_dir, pid):
    path = os.path.join(out_dir, "steps.log")
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return [int(step) for p, step in (line.split() for line in handle if line.strip())
                if int(p) == pid]


def _newest_step(directory):
    import tensorflow as tf
    names = sorted(_checkpoints(directory))
    reader = tf.train.load_checkpoint(os.path.join(directory, names[-1], "ckpt"))
    return int(reader.get_tensor("state__global_step/.ATTRIBUTES/VARIABLE_VALUE"))


EVERY = 4  # optimizer steps between checkpoints in the step-checkpoint kill test


@pytest.mark.slow
@pytest.mark.parametrize("source", ["arrays", "tf.data"])
def test_sigterm_and_sigkill_at_random_steps_resume_bit_identical(tmp_path, source):
    """Step checkpoints: SIGTERM twice and SIGKILL twice at random moments, mid-epoch
    mostly; each SIGTERM exits within seconds, non-zero; each SIGKILL redoes at most
    `EVERY` steps plus one call (steps_per_execution=1)."""
    seed = int(os.environ.get("EXBURN_KILL_SEED", random.randrange(2**31)))
    rng = random.Random(seed)
    deadline = time.monotonic() + DEADLINE
    options = ["--unit", "step", "--every", str(EVERY)] + (["--tf-data"] if source == "tf.data"
                                                            else [])
    checkpoint_dir, out_dir = tmp_path / "checkpoints", tmp_path / "run"
    reference = _start_steps(tmp_path / "reference", tmp_path / "reference_checkpoints",
                             False, options)
    message = f"EXBURN_KILL_SEED={seed}"
    resume = False
    for signal_number in (signal.SIGTERM, signal.SIGKILL, signal.SIGTERM, signal.SIGKILL):
        process = _start_steps(out_dir, checkpoint_dir, resume, options, STEP_SLEEP)
        resume = True
        target = rng.randint(2, 12)
        if not _wait_until(process, lambda: len(_steps_logged(out_dir, process.pid)) >= target,
                           deadline):
            break
        os.kill(process.pid, signal_number)
        sent = time.monotonic()
        process.wait()
        if signal_number == signal.SIGTERM:
            assert time.monotonic() - sent < 5.0, message
            assert process.returncode == 1, message
            assert b"Preempted" in process.stderr.read(), message
            assert _newest_step(checkpoint_dir) == _steps_logged(out_dir, process.pid)[-1]
        else:
            assert process.returncode == -signal.SIGKILL, message
            redone = _steps_logged(out_dir, process.pid)[-1] - _newest_step(checkpoint_dir)
            assert 0 <= redone <= EVERY + 1, message
    final = _start_steps(out_dir, checkpoint_dir, True, options)
    _finish(final, deadline)
    _finish(reference, deadline)
    expected_variables, expected_history = _result(tmp_path / "reference")
    variables, history = _result(out_dir)
    for i, (value, expected) in enumerate(zip(variables, expected_variables)):
        assert np.array_equal(value, expected), f"variable {i} differs; {message}"
    assert history == expected_history, message
