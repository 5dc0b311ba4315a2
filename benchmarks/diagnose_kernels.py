"""Where the time inside eb.fit's XLA program goes, kernel by kernel (a diagnostic, not in
run_all).

Runs the peer suite's eb configuration (peer_worker.Runner: Nesterov SGD, clip, decay,
cosine, accuracy) for a warm-up call, then one call under TensorFlow's profiler. It reads
the XLA CPU runtime's events from the trace: one per kernel (thunk) it runs. It tables
them per training step, in three groups:

    dots        XLA's matrix products (`dot`; their names start with MatMul)
    other       every other kernel: elementwise and reduction fusions, gathers, copies
    untraced    the program's span on the worker threads that no kernel event covers

A dot is multi-threaded: the event of the thread that launches it can end before its
helpers finish. So the dots' figure is a lower bound, and `untraced` holds the rest of
their time together with the runtime's own dispatch and waits. The per-kernel rows show
which fusions cost most.

    python benchmarks/diagnose_kernels.py --model mlp --batch 1024
    python benchmarks/diagnose_kernels.py --model cnn --batch 32 --epochs 2
"""

import argparse
import collections
import glob
import os
import re
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import peer_worker  # noqa: E402  (a script beside this one)
# An XLA kernel's event carries its HLO instruction's name (`MatMul.78`, `add_fusion.3`);
# the runtime's and TensorFlow's own scopes are C++ names (`ThunkExecutor::Execute`,
# `ExecutorState::Process`) or TF ops (`name:Type`), and these few plain words.
_KERNEL = re.compile(r"[A-Za-z][\w.\-]*")
_HOST_WORDS = {"BlockUntilReady"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    peer_worker.add_run_arguments(p, batch=1024, epochs=4,
                                  epochs_help="epochs of the profiled call")
    p.add_argument("--rows", type=int, default=12, help="kernels listed by time")
    return p.parse_args(argv)


def kernel_events(logdir):
    """[(start_ps, duration_ps, kernel name)] of the XLA kernels on the worker threads."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    events = []
    for path in glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True):
        space = xplane_pb2.XSpace()
        with open(path, "rb") as f:
            space.ParseFromString(f.read())
        for plane in space.planes:
            names = plane.event_metadata
            for line in plane.lines:
                if line.name == "python":  # the host thread: calls, not kernels
                    continue
                for event in line.events:
                    name = names[event.metadata_id].name
                    if not _KERNEL.fullmatch(name) or name in _HOST_WORDS:
                        continue
                    events.append((line.timestamp_ns * 1000 + event.offset_ps,
                                   event.duration_ps, name))
    return sorted(events)


def covered(events):
    """Picoseconds of the union of the events' intervals, and the span they lie in."""
    busy, (start, end) = 0, (events[0][0], events[0][0] + events[0][1])
    first = start
    for s, d, _ in events[1:]:
        if s > end:
            busy, start, end = busy + end - start, s, s + d
        else:
            end = max(end, s + d)
    return busy + end - start, end - first


def table(events, steps, rows):
    """The per-step figures as markdown."""
    per_step = lambda ps: ps / 1e9 / steps  # noqa: E731  (ms per step)
    dots = sum(d for _, d, n in events if n.startswith("MatMul"))
    other = sum(d for _, d, n in events if not n.startswith("MatMul"))
    busy, span = covered(events)
    lines = ["| per training step | ms | share of the span |", "|---|---|---|",
             f"| span of the program's kernels | {per_step(span):.2f} | 1.00 |",
             f"| dots (lower bound) | {per_step(dots):.2f} | {dots / span:.2f} |",
             f"| other kernels | {per_step(other):.2f} | {other / span:.2f} |",
             f"| untraced | {per_step(span - busy):.2f} | {(span - busy) / span:.2f} |",
             "", f"kernel events per step: {len(events) / steps:.0f}", "",
             "| kernel | ms per step | events per step |", "|---|---|---|"]
    by_name, counts = collections.Counter(), collections.Counter()
    for _, d, n in events:
        key = re.sub(r"\.\d+$", "", n) if not n.startswith("MatMul") else n
        by_name[key] += d
        counts[key] += 1
    lines += [f"| {n} | {per_step(t):.3f} | {counts[n] / steps:.1f} |"
              for n, t in by_name.most_common(rows)]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    runner = peer_worker.warmed_eb_runner(args)
    logdir = tempfile.mkdtemp(prefix="eb_kernels_")
    try:
        tf.profiler.experimental.start(logdir)
        try:
            seconds = runner.fit(args.epochs)
        finally:
            tf.profiler.experimental.stop()
        events = kernel_events(logdir)
    finally:
        shutil.rmtree(logdir, ignore_errors=True)
    steps = args.epochs * -(-len(runner.x) // args.batch)
    print(f"## eb.fit's XLA kernels: {args.model}, batch {args.batch}, {args.epochs} epochs "
          f"of {len(runner.x)} samples ({steps} steps, {seconds * 1e3 / steps:.2f} ms per "
          f"step for the whole call, profiler on)")
    if not events:
        print("no XLA kernel events in the trace (this TensorFlow's runtime does not "
              "trace its kernels, or the step ran as a graph)")
        return 1
    print(table(events, steps, args.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
