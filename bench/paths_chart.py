"""Draws the path benchmarks' results as one PNG.

    python bench/paths_chart.py bench/results/results.json bench/results/chart.png

Four panels: the p50 of `run_sync` per case and per contender; the p50 of a Bridge
`add` per contender (log scale); the throughput of `run_sync` and of Bridge `add`
against concurrency, per contender, with 1 worker (solid) and 2 (dashed). Needs
matplotlib (priv/python/requirements-bench.txt).
"""

from __future__ import annotations

import json
import sys
import textwrap
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes

CONTENDERS = {
    "synapse": ("Synapse", "tab:blue"),
    "synapse_lean": ("Synapse, messages: false", "tab:cyan"),
    "synapse_on_loop": ('Synapse, "on_loop": true', "tab:red"),
    "etf": ("ErlPort-shaped: Port + packet 4 + ETF", "tab:orange"),
    "jsonl": ("Port, JSON lines", "tab:green"),
    "inprocess": ("in-process Python", "tab:gray"),
    "inprocess_paced": ("in-process Python, paused before each run", "tab:brown"),
    "grpcio": ("Python grpc.aio client, same worker", "tab:purple"),
}
RUN_CASES = {"minimal": "minimal", "python_tool": "Python tool", "elixir_tool": "Elixir tool"}


def latency_bars(ax: Axes, latency: dict[str, Any], cases: dict[str, str], scale: float) -> None:
    names = [n for n in CONTENDERS if any(n in latency[c] for c in cases)]
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        xs, ys = [], []
        for j, case in enumerate(cases):
            if name in latency[case]:
                xs.append(j + i * width)
                ys.append(latency[case][name]["p50_us"] / scale)
        label, color = CONTENDERS[name]
        ax.bar(xs, ys, width, label=label, color=color)
    ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(cases))])
    ax.set_xticklabels(cases.values())


def throughput_lines(ax: Axes, points: dict[str, Any], case: str) -> None:
    for workers, style in (("1", "-"), ("2", "--")):
        by_k = points.get(workers, {})
        ks = sorted(by_k, key=int)
        for name, (label, color) in CONTENDERS.items():
            if case == "add" and name == "inprocess":
                continue  # a plain loop: off the scale of calls that cross a process
            xs = [int(k) for k in ks if name in by_k[k]]
            if not xs:
                continue
            ys = [by_k[str(k)][name]["calls_per_s"] for k in xs]
            ax.plot(
                xs,
                ys,
                style,
                marker="o",
                color=color,
                label=f"{label}, {workers} worker(s)" if workers == "1" else None,
            )
    ax.set_xscale("log", base=2)
    ticks = sorted({int(k) for by_k in points.values() for k in by_k})
    ax.set_xticks(ticks, [str(k) for k in ticks])
    ax.set_xlabel("concurrency (solid: 1 worker or process, dashed: 2)")
    ax.set_ylabel("calls/s")


def main(source: str, target: str) -> None:
    with open(source, encoding="utf-8") as file:
        results = json.load(file)
    latency = results["latency"]
    figure, ((a, b), (c, d)) = plt.subplots(2, 2, figsize=(14, 10))

    latency_bars(a, latency, RUN_CASES, 1000)
    a.set_title("run_sync p50, one run in flight")
    a.set_ylabel("ms")
    a.legend(fontsize=8)

    latency_bars(b, latency, {"add": "add(a, b)"}, 1)
    b.set_yscale("log")
    b.set_title("Bridge add p50, one call in flight (log scale)")
    b.set_ylabel("µs")
    # Room above the bars for the legend (log scale: a factor, not a margin).
    b.set_ylim(top=b.get_ylim()[1] * 30)
    b.legend(fontsize=8, loc="upper right")

    throughput_lines(c, results["throughput"]["minimal"], "minimal")
    c.set_title("run_sync throughput, minimal agent")
    c.legend(fontsize=7)

    throughput_lines(d, results["throughput"]["add"], "add")
    d.set_title("Bridge add throughput (in-process loop left out: far off the scale)")

    title = (
        f"Synapse against each baseline, {results['machine']['cores']} cores, one run "
        f"({results['command']}); ratios in report.md"
    )
    # A long command would run off the figure's edges.
    figure.suptitle(textwrap.fill(title, width=150))
    figure.tight_layout()
    figure.savefig(target, dpi=90)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
