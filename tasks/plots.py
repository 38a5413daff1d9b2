"""PNG plots people look at: loss curves, confusion matrices. Headless (Agg)."""

from __future__ import annotations

from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_curve(series: dict[str, list[tuple[float, float]]], path: Path, title: str, xlabel: str = "step") -> Path:
    """``series`` maps a name to (x, loss) points; e.g. {"train": [...], "eval": [...]}."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for name, pts in series.items():
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o" if len(pts) < 20 else None, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def bars(values: dict[str, float], path: Path, title: str, ylabel: str) -> Path:
    """One bar per name, its value written above it (the soup's members and the soup, on validation)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(values) + 1), 4), dpi=100)
    names, ys = list(values), list(values.values())
    drawn = ax.bar(range(len(ys)), ys, color=["#9ab" if i < len(ys) - 1 else "#36c" for i in range(len(ys))])
    ax.bar_label(drawn, fmt="%.4f", fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    low = min(ys) if ys else 0.0
    ax.set_ylim(max(0.0, low - 0.1), min(1.0, max(ys) + 0.05) if ys else 1.0)  # the differences are points, not the whole scale
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def confusion_matrix(matrix: list[list[int]], labels: list[str], path: Path, title: str) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4), dpi=100)
    im = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=30)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    peak = max(max(r) for r in matrix) or 1
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > peak / 2 else "black")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
