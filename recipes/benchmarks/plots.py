"""Figure helpers the benchmarks share."""

from __future__ import annotations

__all__ = ["save_with_shared_legend"]


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
