"""Tables and figures the benchmarks share."""

from __future__ import annotations

__all__ = ["mean_std_table", "save_with_shared_legend"]


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
