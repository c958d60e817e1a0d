"""The PNG of run_all.py: latency distributions (CDF) and throughput bars."""

from __future__ import annotations

from pathlib import Path

from _measure import Latency


def have_matplotlib() -> str | None:
    """None when matplotlib can be imported, else why not."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        return f"matplotlib is not installed ({exc}); python3 -m pip install '.[bench]'"
    return None


def save(path: Path, latencies: dict[str, Latency], throughput: dict[str, float]) -> None:
    import matplotlib

    # Agg: no display on CI machines and servers.
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (cdf, bars) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [2, 1]})
    colors: dict[str, str] = {}
    for name, measured in latencies.items():
        ordered = sorted(value * 1e6 for value in measured.samples)
        fractions = [(i + 1) / len(ordered) for i in range(len(ordered))]
        (line,) = cdf.plot(ordered, fractions, label=name, linewidth=1.5)
        colors[name] = line.get_color()
    cdf.set_xscale("log")
    cdf.set_xlabel("round trip (µs, log scale)")
    cdf.set_ylabel("fraction of calls")
    cdf.set_title("Sequential round-trip latency (CDF)")
    cdf.axhline(0.5, color="grey", linewidth=0.5, linestyle=":")
    cdf.axhline(0.99, color="grey", linewidth=0.5, linestyle=":")
    cdf.grid(True, which="both", linewidth=0.3)
    cdf.legend(fontsize="small")

    names = list(throughput)
    values = list(throughput.values())
    # Each bar in its line's colour, so the two panels read as one legend.
    drawn = bars.bar(names, values, color=[colors.get(name, "tab:grey") for name in names])
    bars.bar_label(drawn, labels=[f"{value:,.0f}" for value in values])
    bars.set_ylabel("calls / s")
    bars.set_title("Throughput, 64 calls in flight")

    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
