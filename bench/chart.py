"""Draws the benchmark results as one PNG: echo latency, and throughput against concurrency.

    PYTHON bench/chart.py RESULTS_JSON OUT_PNG   (an interpreter with matplotlib)

RESULTS_JSON holds (every key optional; what is missing is left out of the chart):

    {"latency": {"synapse": {"p50_us": 1, "p99_us": 2}, "tonic": {...}, ...},
     "throughput": {"synapse_1": [{"concurrency": 1, "calls_per_s": 1.0}, ...], ...}}

Latency keys are clients (synapse, tonic, grpcio, port_jsonl, in that order, then any
other); throughput keys are CLIENT_WORKERS. Needs matplotlib
(priv/python/requirements-bench.txt). Prints `{"png": OUT_PNG}` on stdout.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # after choosing the backend
from matplotlib.axes import Axes
from matplotlib.ticker import (
    FixedLocator,
    FuncFormatter,
    NullLocator,
    ScalarFormatter,
)

CLIENTS = ["synapse", "tonic", "grpcio", "port_jsonl"]
LABELS = {
    "synapse": "Synapse (BEAM → NIF → tonic)",
    "tonic": "Rust tonic",
    "grpcio": "Python grpc.aio",
    "port_jsonl": "Erlang Port, JSON lines",
}
COLORS = {"synapse": "#6b3fa0", "tonic": "#d9822b", "grpcio": "#2b83ba", "port_jsonl": "#5a9e4b"}
LINESTYLES = ["-", "--", ":", "-."]


def ordered(keys: Sequence[str], order: Sequence[str]) -> list[str]:
    """`keys` with those in `order` first, in that order, then the others sorted."""
    rank = {key: i for i, key in enumerate(order)}
    return sorted(keys, key=lambda key: (rank.get(key, len(order)), key))


def number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def positive(value: Any) -> float | None:
    """A positive number (what a log scale can show), or None."""
    n = number(value)
    return n if n is not None and n > 0 else None


def split_series(key: str) -> tuple[str, int | None]:
    """`synapse_2` → ("synapse", 2); a key with no worker count → (key, None)."""
    client, _, workers = key.rpartition("_")
    if client and workers.isdigit():
        return client, int(workers)
    return key, None


def color(client: str, index: int) -> str:
    return COLORS.get(client, f"C{index % 10}")


def no_data(ax: Axes, title: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def latency_panel(ax: Axes, latency: Any) -> None:
    title = "Echo latency, one call in flight"
    rows = []
    if isinstance(latency, dict):
        for client in ordered(list(latency), CLIENTS):
            entry = latency[client]
            if not isinstance(entry, dict):
                continue
            p50, p99 = positive(entry.get("p50_us")), positive(entry.get("p99_us"))
            if p50 is not None or p99 is not None:
                rows.append((client, p50, p99))
    if not rows:
        no_data(ax, title)
        return
    width = 0.38
    for i, (client, p50, p99) in enumerate(rows):
        for offset, value, alpha, name in (
            (-width / 2, p50, 1.0, "p50"),
            (width / 2, p99, 0.45, "p99"),
        ):
            if value is None:
                continue
            bars = ax.bar(i + offset, value, width, color=color(client, i), alpha=alpha)
            ax.bar_label(bars, labels=[f"{name}\n{value:,.0f}"], fontsize=7, padding=2)
    ax.set_xticks(range(len(rows)), [LABELS.get(c, c) for c, _, _ in rows], fontsize=8)
    ax.tick_params(axis="x", labelrotation=15)
    # Log scale: a p99 tail must not flatten the p50s it is compared with.
    values = [v for _, p50, p99 in rows for v in (p50, p99) if v is not None]
    ax.set_yscale("log")
    ax.set_ylim(min(values) / 2, max(values) * 3)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
    ax.set_ylabel("µs, log scale (solid p50, light p99)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)


def throughput_panel(ax: Axes, throughput: Any) -> None:
    title = "Echo throughput"
    drawn = 0
    concurrencies: set[float] = set()
    if isinstance(throughput, dict):
        for index, key in enumerate(
            ordered(list(throughput), ["synapse_1", "tonic_1", "synapse_2", "tonic_2"])
        ):
            points = []
            for point in throughput[key] if isinstance(throughput[key], list) else []:
                if not isinstance(point, dict):
                    continue
                x, y = number(point.get("concurrency")), number(point.get("calls_per_s"))
                if x is not None and y is not None and x > 0:
                    points.append((x, y))
            if not points:
                continue
            points.sort()
            client, workers = split_series(key)
            label = LABELS.get(client, client).split(" (")[0]
            if workers is not None:
                label += f", {workers} worker" + ("s" if workers != 1 else "")
            style = LINESTYLES[((workers or 1) - 1) % len(LINESTYLES)]
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, style, marker="o", color=color(client, index), label=label)
            concurrencies.update(xs)
            drawn += 1
    if not drawn:
        no_data(ax, title)
        return
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(sorted(concurrencies)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("concurrent calls")
    ax.set_ylabel("calls/s")
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def main(argv: Sequence[str]) -> int:
    if len(argv) != 2:
        print("usage: chart.py RESULTS_JSON OUT_PNG", file=sys.stderr)
        return 2
    source, out = Path(argv[0]), Path(argv[1])
    try:
        results = json.loads(source.read_text())
    except (OSError, ValueError) as exc:
        print(f"chart.py: cannot read {source}: {exc}", file=sys.stderr)
        return 1
    if not isinstance(results, dict):
        print(f"chart.py: {source} does not hold a JSON object", file=sys.stderr)
        return 1
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5), layout="constrained")
    latency_panel(left, results.get("latency"))
    throughput_panel(right, results.get("throughput"))
    fig.savefig(out, dpi=120)
    plt.close(fig)
    print(json.dumps({"png": str(out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
