"""The results table of the benchmarks, and the one-line description of the machine.

Imports neither TensorFlow nor JAX (versions come from the packages' metadata), so a
process that only starts and compares other processes, like bench_peers.py, stays light.
"""

import json
import os
import platform
from importlib import metadata


def machine(packages=("tensorflow", "keras", "exburn_tf")):
    """A one-line description of the machine and the versions of `packages`."""
    model_name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model_name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return (f"{model_name}, {os.cpu_count()} logical CPUs (load average {load}); "
            + ", ".join(f"{name} {version}" for name, version in versions(packages)))


def versions(packages):
    """(name, version) of each installed distribution in `packages`, from its metadata."""
    found = []
    for name in packages:
        try:
            found.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            pass
    return found


class Report:
    """Rows of figures, each with an optional ratio against a target (PASS / MISS)."""

    def __init__(self, title):
        self.title = title
        self.rows = []

    def add(self, name, figure, ratio=None, target=None, at_most=False):
        """`figure` is text; `ratio` and `target` numbers (a target needs a ratio).

        The ratio passes when it is >= target, or <= target with `at_most=True`.
        """
        verdict = ""
        if target is not None:
            verdict = "PASS" if (ratio <= target if at_most else ratio >= target) else "MISS"
        self.rows.append({"name": name, "figure": figure, "ratio": ratio, "target": target,
                          "at_most": at_most, "verdict": verdict})

    def print(self):
        print(f"\n## {self.title}\n{machine()}\n")
        header = ("measure", "figure (median)", "ratio", "target", "")
        table = [header] + [
            (row["name"], row["figure"],
             "" if row["ratio"] is None else f"{row['ratio']:.2f}",
             "" if row["target"] is None else
             f"{'<=' if row['at_most'] else '>='} {row['target']:.2f}", row["verdict"])
            for row in self.rows]
        widths = [max(len(line[i]) for line in table) for i in range(len(header))]
        for index, line in enumerate(table):
            print("| " + " | ".join(cell.ljust(w) for cell, w in zip(line, widths)) + " |")
            if index == 0:
                print("|" + "|".join("-" * (w + 2) for w in widths) + "|")

    def write_json(self, path):
        if path:
            with open(path, "w") as out:
                json.dump({"title": self.title, "machine": machine(), "rows": self.rows},
                          out, indent=2)
