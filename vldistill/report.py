"""Looking inside a distilled set, and the results table.

- `results_table(results)`: methods x IR@1/5/10, TR@1/5/10, r_mean +- std as markdown.
- `decode_captions(...)`: nearest training captions of synthetic text embeddings (cosine).
- `save_image_grid(...)`: synthetic images, each with its decoded caption, as a PNG.
- `save_similarity_heatmap(...)`: the learned similarity matrix as a PNG heat map.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

METHOD_ORDER = ("lors", "baseline", "random", "herding", "kcenter", "full")
COLUMNS = (("IR@1", "img_r1"), ("IR@5", "img_r5"), ("IR@10", "img_r10"),
           ("TR@1", "txt_r1"), ("TR@5", "txt_r5"), ("TR@10", "txt_r10"))


def _ordered(methods: dict) -> list[str]:
    known = [m for m in METHOD_ORDER if m in methods]
    return known + sorted(m for m in methods if m not in METHOD_ORDER)


def results_table(results: dict) -> str:
    """Markdown table of a results.json dict (val-selected numbers; final-epoch r_mean beside)."""
    header = ["method"] + [name for name, _ in COLUMNS] + ["r_mean", "final r_mean", "seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in _ordered(results["methods"]):
        m = results["methods"][name]
        cells = [name] + [f"{m[key]:.1f}" for _, key in COLUMNS]
        cells.append(f"{m['r_mean']:.2f} ± {m['r_mean_std']:.2f}")
        final = m.get("final", {})
        cells.append(f"{final['r_mean']:.2f} ± {final.get('r_mean_std', 0):.2f}" if final else "-")
        cells.append(str(m.get("n_seeds", "")))
        lines.append("| " + " | ".join(cells) + " |")
    selection = next(iter(results["methods"].values()), {}).get("selection", "")
    title = f"{results.get('dataset', '?')}, {results.get('n_pairs', '?')} pairs"
    return f"{title} — test split, {selection}; IR = text→image, TR = image→text\n\n" + "\n".join(lines)


@torch.no_grad()
def decode_captions(embeddings: torch.Tensor, bank: torch.Tensor, captions: Sequence[str],
                    k: int = 1) -> list[list[tuple[str, float]]]:
    """For each embedding, the k nearest captions of the bank by cosine similarity."""
    unique: dict[str, int] = {}
    for i, caption in enumerate(captions):
        unique.setdefault(caption, i)
    rows = torch.tensor(list(unique.values()))
    names = list(unique)
    scores = F.normalize(embeddings.float(), dim=-1) @ F.normalize(bank[rows].float(), dim=-1).t()
    top = scores.topk(min(k, len(names)), dim=1)
    return [[(names[j], float(s)) for s, j in zip(vals.tolist(), idx.tolist())]
            for vals, idx in zip(top.values, top.indices)]


def denormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Back to [0, 1] pixels for display (values outside are clipped)."""
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (images.float().cpu() * s + m).clamp(0, 1)


def save_image_grid(images: torch.Tensor, captions: Sequence[str], path: str | Path,
                    columns: int = 10, max_images: int = 50) -> Path:
    """A grid of (denormalized) images with a caption under each."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = min(len(images), max_images)
    rows = -(-n // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.9, rows * 2.2), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        ax = axes.flat[i]
        ax.imshow(images[i].permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(_wrap(captions[i], 22), fontsize=6)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _wrap(text: str, width: int) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if len(line) + len(word) + 1 > width and line:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    return "\n".join(lines[:3])


def save_similarity_heatmap(matrix: torch.Tensor, path: str | Path, title: str = "") -> Path:
    """The learned similarity matrix; a diverging colour map centred on 0."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    values = matrix.float().cpu().numpy()
    bound = max(abs(values.min()), abs(values.max()), 1e-6)
    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(values, cmap="RdBu_r", vmin=-bound, vmax=bound, interpolation="nearest")
    fig.colorbar(im, ax=ax)
    ax.set_title(title or "learned similarity S")
    ax.set_xlabel("synthetic text j")
    ax.set_ylabel("synthetic image i")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
