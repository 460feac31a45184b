"""Tables and figures the benchmarks share."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from recipes.trainer.metrics import aggregate

__all__ = ["group_by_method", "mean_std_table", "plot_methods_vs_fraction", "save_with_shared_legend"]


def group_by_method(values: Iterable[tuple[str, float, float]], order: Sequence[str]) -> dict[str, dict[float, dict]]:
    """Method → kept fraction → aggregate over seeds of ``(method, fraction, value)`` triples.

    Methods come in ``order`` (names not in it after, in first-seen order), fractions ascending.

    Example:
        >>> group_by_method([("random", 0.1, 0.5), ("random", 0.1, 0.7)], ["random"])["random"][0.1]["mean"]
        0.6
    """
    table: dict[str, dict[float, list]] = {}
    for name, fraction, value in values:
        table.setdefault(name, {}).setdefault(float(fraction), []).append(value)
    ranked = list(order)
    names = sorted(table, key=lambda n: ranked.index(n) if n in ranked else len(ranked))
    return {name: {f: aggregate(v) for f, v in sorted(table[name].items())} for name in names}


def plot_methods_vs_fraction(ax, summary: dict, *, baseline: str, baseline_fraction: float,
                             highlight: Sequence[str] = (), markersize: float = 3) -> None:
    """One line per method (mean ± std in %, against the kept fraction in %) and ``baseline`` as a dashed line.

    ``summary`` is `group_by_method`'s output; the ``highlight`` methods are drawn thicker.

    Example:
        >>> plot_methods_vs_fraction(ax, summary, baseline="full pool", baseline_fraction=1.0, highlight=["InfoMax"])
    """
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab10")
    for i, (name, per) in enumerate((n, p) for n, p in summary.items() if n != baseline):
        xs = sorted(per)
        ax.errorbar(
            [x * 100 for x in xs],
            [per[x]["mean"] * 100 for x in xs],
            yerr=[per[x]["std"] * 100 for x in xs],
            marker="o",
            markersize=markersize,
            capsize=2,
            color=cmap(i % 10),
            label=name,
            linewidth=2.5 if name in highlight else 1.2,
        )
    if baseline in summary:
        ax.axhline(summary[baseline][baseline_fraction]["mean"] * 100, color="black", linestyle="--", linewidth=1,
                   label=baseline)


def mean_std_table(summary: dict, columns, scale: float = 100.0, header: str = "method",
                   fmt=lambda c: f"{c:.0%} kept") -> str:
    """A markdown table of ``summary[name][column] = {"mean", "std", ...}`` (scaled), "–" where a cell is missing.

    Example:
        >>> print(mean_std_table({"random": {0.1: {"mean": 0.5, "std": 0.01}}}, [0.1, 1.0]))
        | method | 10% kept | 100% kept |
        |---|---|---|
        | random | 50.0 ± 1.0 | – |
    """
    lines = [f"| {header} | " + " | ".join(fmt(c) for c in columns) + " |", "|---|" + "---|" * len(columns)]
    for name, per in summary.items():
        cells = []
        for c in columns:
            a = per.get(float(c))
            cells.append(f"{a['mean'] * scale:.1f} ± {a['std'] * scale:.1f}" if a else "–")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save_with_shared_legend(fig, axes, path) -> None:
    """One legend under all panels (each method once, in first-seen order), then save and close ``fig``.

    Example:
        >>> fig, axes = plt.subplots(1, 3)
        >>> save_with_shared_legend(fig, axes, "metrics.png")
    """
    import matplotlib.pyplot as plt

    handles = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=10, fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
