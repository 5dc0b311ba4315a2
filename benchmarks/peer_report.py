"""The tables of bench_peers.py: samples/s per contender, eb's ratios, and the targets."""

import _report

RATE_GROUPS = {"mlp_32": "MLP b32", "mlp_1024": "MLP b1024", "cnn_32": "CNN b32",
               "cnn_128": "CNN b128", "transformer_32": "Transformer b32"}
LABELS = {
    "eb": "eb.fit (defaults)",
    "eb_graph": "eb.fit, jit_compile=False (graph path)",
    "keras_tf": "Keras TF, defaults",
    "keras_tf_spe32": "Keras TF, steps_per_execution=32",
    "keras_tf_xla_spe32": "Keras TF, XLA + steps_per_execution=32",
    "keras_jax": "Keras JAX, defaults",
    "keras_jax_spe32": "Keras JAX, steps_per_execution=32",
    "jax_scan": "JAX/Optax lax.scan loop",
}
# Targets of issue 12: (label, kind, group, target).
TARGETS = (
    ("eb / fastest Keras, MLP batch 32", "keras", "mlp_32", 1.2),
    ("eb / fastest Keras, MLP batch 1024", "keras", "mlp_1024", 1.1),
    ("eb / JAX scan loop, MLP batch 32", "jax_scan", "mlp_32", 0.8),
    ("eb / JAX scan loop, MLP batch 1024", "jax_scan", "mlp_1024", 0.8),
    ("eb / fastest Keras, MNIST-1D CNN batch 32", "keras", "cnn_32", 1.0),
    ("eb / fastest Keras, MNIST-1D CNN batch 128", "keras", "cnn_128", 1.0),
    ("eb / fastest Keras, Transformer batch 32", "keras", "transformer_32", 1.0),
    ("eb batch 64 x accumulate 4 / eb batch 256", "accumulation", "accumulation", 0.9),
    ("model FLOP utilisation, eb.fit MLP batch 1024", "mfu", "mlp_1024", 0.7),
)


def _table(header, rows):
    widths = [max(len(line[i]) for line in [header] + rows) for i in range(len(header))]
    lines = []
    for index, line in enumerate([header] + rows):
        lines.append("| " + " | ".join(cell.ljust(w) for cell, w in zip(line, widths)) + " |")
        if index == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def print_rates(medians, args):
    """Median samples/s of every contender per group, then eb's ratio to each."""
    groups = [group for group in RATE_GROUPS if group in medians]
    if not groups:
        return
    names = [name for name in LABELS if any(name in medians[g] for g in groups)]
    header = ["samples/s (median)"] + [RATE_GROUPS[g] for g in groups]

    def cell(group, name, fn):
        value = medians[group].get(name)
        return "—" if value is None else fn(value, medians[group].get("eb"))

    rates = [[LABELS[name]] + [cell(g, name, lambda v, eb: f"{v:,.0f}") for g in groups]
             for name in names]
    ratios = [[f"eb / {LABELS[name]}"] +
              [cell(g, name, lambda v, eb: "—" if eb is None else f"{eb / v:.2f}")
               for g in groups] for name in names if name != "eb"]
    print(f"\n## Peers: samples/s, medians of {args.repeats} round(s) of whole fit calls"
          f"{' (--quick)' if args.quick else ''}\n{_report.machine(_PACKAGES)}\n")
    print(_table(header, rates))
    if ratios:
        print()
        print(_table(["ratio"] + [RATE_GROUPS[g] for g in groups], ratios))


_PACKAGES = ("tensorflow", "keras", "jax", "optax", "exburn_tf")


def targets(medians, multiply_adds, args):
    """The targets of issue 12 as a Report: PASS / MISS, or a figure saying what is missing."""
    report = _report.Report(f"Peers: targets of issue 12, medians of {args.repeats} round(s)"
                            f"{' (--quick)' if args.quick else ''}")
    for label, kind, group, target in TARGETS:
        figures = medians.get(group, {})
        figure, ratio = _target_figure(kind, figures, multiply_adds)
        if ratio is None:
            report.add(label, figure)
        else:
            report.add(label, figure, ratio, target)
    return report


def _target_figure(kind, figures, multiply_adds):
    """(figure text, ratio or None) for one target."""
    if kind == "accumulation":
        small, large = figures.get("eb_64x4"), figures.get("eb_256")
        if small is None or large is None:
            return "not measured", None
        return f"{small:,.0f} vs {large:,.0f} samples/s", small / large
    eb = figures.get("eb")
    if eb is None:
        return "not measured (eb did not run)", None
    if kind == "mfu":
        peak = figures.get("matmul_peak")
        if peak is None:
            return "not measured (no matmul peak)", None
        flops = 6.0 * multiply_adds * eb  # 2 x MACs forward, x 3 for forward + backward
        return (f"{flops / 1e9:,.1f} / {peak / 1e9:,.1f} GFLOP/s (n×n matmul, fastest round)",
                flops / peak)
    if kind == "jax_scan":
        scan = figures.get("jax_scan")
        if scan is None:
            return "not measured (jax_scan did not run)", None
        return f"{eb:,.0f} vs {scan:,.0f} samples/s", eb / scan
    keras = {name: value for name, value in figures.items() if name.startswith("keras")}
    if not keras:
        return "not measured (no Keras contender ran)", None
    fastest = max(keras, key=keras.get)
    return f"{eb:,.0f} vs {keras[fastest]:,.0f} samples/s ({LABELS[fastest]})", eb / keras[fastest]
