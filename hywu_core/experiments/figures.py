"""The reports' figures (matplotlib, Agg backend: no screen needed)."""
from __future__ import annotations

from pathlib import Path

import torch


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def grouped_bars(path: Path, title: str, groups: list[str], series: dict[str, list[float]], ylabel: str,
                 intervals: dict[str, list[tuple[float, float]]] | None = None) -> Path:
    """One group of bars per entry of `groups`, one bar per series; `intervals` (low, high) per bar
    are drawn as error bars."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(min(16, max(6, 1.2 * len(groups) * max(1, len(series)) / 3)), 4))
    width = 0.8 / max(1, len(series))
    for k, (name, values) in enumerate(series.items()):
        x = [i + k * width for i in range(len(groups))]
        ax.bar(x, values, width, label=name)
        if intervals and name in intervals:
            low = [v - lo if lo == lo else 0.0 for v, (lo, _) in zip(values, intervals[name])]   # nan: no bar
            high = [hi - v if hi == hi else 0.0 for v, (_, hi) in zip(values, intervals[name])]
            ax.errorbar(x, values, yerr=[low, high], fmt="none", ecolor="black", elinewidth=0.7, capsize=1.5)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))], groups, rotation=20, ha="right")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def intervals(path: Path, title: str, panels: dict[str, list[tuple[str, float, float, float]]]) -> Path:
    """Forest plots side by side, one per panel (its x label): a row per (label, estimate, low, high),
    a line at 0; green / red when the interval is above / below 0, grey when it holds 0 (or is nan)."""
    plt = _pyplot()
    rows = max(len(r) for r in panels.values())
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels) + 2, 1 + 0.32 * rows), squeeze=False)
    for ax, (xlabel, entries) in zip(axes[0], panels.items()):
        for y, (_, estimate, low, high) in enumerate(entries):
            colour = "tab:green" if low > 0 else "tab:red" if high < 0 else "tab:gray"
            ax.plot([low, high], [y, y], color=colour, linewidth=2)
            ax.plot([estimate], [y], "o", color=colour, markersize=4)
        ax.axvline(0, color="black", linewidth=0.6)
        ax.set_yticks(range(len(entries)), [e[0] for e in entries], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(xlabel, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def matrix(path: Path, title: str, labels: list[str], values: torch.Tensor, cmap: str = "coolwarm",
           vmin: float = -1.0, vmax: float = 1.0) -> Path:
    """A labelled square matrix; up to 12 rows have their values written in the cells."""
    plt = _pyplot()
    side = min(len(labels), 12)
    fig, ax = plt.subplots(figsize=(1 + 0.7 * side, 0.8 + 0.6 * side))
    image = ax.imshow(values.numpy(), cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    for i in range(len(labels) if len(labels) <= 12 else 0):
        for j in range(len(labels)):
            ax.text(j, i, f"{float(values[i, j]):.2f}", ha="center", va="center", fontsize=6)
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def histograms(path: Path, title: str, samples: dict[str, torch.Tensor]) -> Path:
    """One histogram per named sample of cosines, side by side, with its mean marked."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(samples), figsize=(3.2 * len(samples), 2.8), squeeze=False)
    for ax, (name, values) in zip(axes[0], samples.items()):
        ax.hist(values.numpy(), bins=30, range=(-1, 1), color="tab:blue")
        mean = float(values.mean()) if values.numel() else float("nan")
        ax.axvline(mean, color="red", linewidth=1)
        ax.set_title(f"{name}\nmean {mean:+.2f}", fontsize=8)
        ax.set_xlabel("cosine", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def scatter(path: Path, title: str, points: torch.Tensor, labels: list[str]) -> Path:
    """2-D points coloured by label."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    for label in dict.fromkeys(labels):
        index = [i for i, x in enumerate(labels) if x == label]
        ax.scatter(points[index, 0].numpy(), points[index, 1].numpy(), s=14, label=label)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def image_rows(path: Path, rows: list[list[torch.Tensor]], header: list[str], scale: int = 2) -> Path:
    """Rows of IMAGE tensors (H, W, 3), one column per header entry."""
    from PIL import Image, ImageDraw

    h, w = rows[0][0].shape[:2]
    cell_w, cell_h, top = w * scale + 4, h * scale + 4, 18
    canvas = Image.new("RGB", (cell_w * len(header), top + cell_h * len(rows)), "white")
    draw = ImageDraw.Draw(canvas)
    for x, name in enumerate(header):
        draw.text((x * cell_w + 3, 3), name, fill="black")
    for y, row in enumerate(rows):
        for x, image in enumerate(row):
            pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
            tile = Image.fromarray(pixels, mode="RGB").resize((w * scale, h * scale), Image.NEAREST)
            canvas.paste(tile, (x * cell_w + 2, top + y * cell_h + 2))
    canvas.save(path)
    return path
