"""The report's PNGs (matplotlib, Agg): synthetic images with their decoded captions, the
learned similarity as a heat map, the mined false-negative pairs, and training curves from
metrics.jsonl (matching loss, student lrs, eval r_mean over iterations)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def denormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Back to [0, 1] pixels for display (values outside are clipped)."""
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (images.float().cpu() * s + m).clamp(0, 1)


def _wrap(text: str, width: int, lines: int = 3) -> str:
    words, out, line = text.split(), [], ""
    for word in words:
        if len(line) + len(word) + 1 > width and line:
            out.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    out.append(line)
    return "\n".join(out[:lines])


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def save_image_grid(images: torch.Tensor, captions: Sequence[str], path: str | Path,
                    columns: int = 10, max_images: int = 50) -> Path:
    """A grid of [0, 1] images (n, 3, H, W) with a caption under each."""
    plt = _pyplot()
    n = min(len(images), max_images)
    columns = min(columns, n)
    rows = -(-n // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.9, rows * 2.2), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        ax = axes.flat[i]
        ax.imshow(images[i].permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(f"{i}: " + _wrap(captions[i], 22), fontsize=6)
    fig.tight_layout()
    return _save(fig, path)


def save_similarity_heatmap(matrix: torch.Tensor, path: str | Path, title: str = "",
                            marked: Sequence[tuple[int, int, float]] = ()) -> Path:
    """The learned similarity matrix, a diverging colour map centred on 0 and scaled to the
    off-diagonal entries (the diagonal, ~1, saturates); `marked` entries are circled."""
    plt = _pyplot()
    values = matrix.float().cpu().numpy()
    off = matrix.float().cpu().clone().fill_diagonal_(0).abs().max()
    bound = max(float(off), 1e-6) if len(values) > 1 else 1.0
    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(values, cmap="RdBu_r", vmin=-bound, vmax=bound, interpolation="nearest")
    for i, j, _ in marked:
        ax.scatter([j], [i], s=40, facecolors="none", edgecolors="black", linewidths=0.8)
    fig.colorbar(im, ax=ax)
    ax.set_title((title or "learned similarity S") + f"\ncolour scale ±{bound:.2f} (off-diagonal)",
                 fontsize=9)
    ax.set_xlabel("synthetic text j")
    ax.set_ylabel("synthetic image i")
    fig.tight_layout()
    return _save(fig, path)


def save_pair_panel(images: torch.Tensor, pairs: Sequence[tuple[int, int, float]],
                    captions: Sequence[str], path: str | Path) -> Path:
    """One row per pair (i, j, S_ij): image i, its decoded caption, image j, its caption."""
    plt = _pyplot()
    rows = max(len(pairs), 1)
    fig, axes = plt.subplots(rows, 4, figsize=(10, 1.3 * rows), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 3, 1, 3]})
    for ax in axes.flat:
        ax.axis("off")
    for r, (i, j, value) in enumerate(pairs):
        for col, k in ((0, i), (2, j)):
            axes[r, col].imshow(images[k].permute(1, 2, 0).numpy(), interpolation="nearest")
            axes[r, col + 1].text(0, 0.5, f"#{k}: " + _wrap(captions[k], 48, 2), fontsize=7,
                                  va="center")
        axes[r, 0].set_title(f"S[{i},{j}] = {value:.3f}", fontsize=7, loc="left")
    fig.tight_layout()
    return _save(fig, path)


def read_metrics(path: str | Path) -> list[dict]:
    """metrics.jsonl records; a resumed run re-logs some iterations, the last record wins."""
    path = Path(path)
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    latest: dict = {}
    for i, r in enumerate(records):
        key = (r.get("stage"), _series(r), r.get("it")) if "it" in r else ("once", i)
        latest[key] = r
    return list(latest.values())


def _series(record: dict) -> str:
    """The set a record belongs to: its method (older runs recorded the similarity kind)."""
    return record.get("method", record.get("kind", "?"))


def save_training_curves(records: list[dict], path: str | Path) -> Path | None:
    """Matching loss, learned lrs and the distillation curve (the val probe's r_mean from the
    set's start, iteration 0, on) against iterations, per distilled method; the final test
    evaluation's r_mean of each method as a dashed line. None: no records."""
    distill = [r for r in records if r.get("stage") == "distill"]
    if not distill:
        return None
    plt = _pyplot()
    fig, (loss_ax, lr_ax, eval_ax) = plt.subplots(1, 3, figsize=(14, 3.6))
    for method in sorted({_series(r) for r in distill}):
        mine = sorted((r for r in distill if _series(r) == method), key=lambda r: r["it"])
        its = [r["it"] for r in mine]
        loss = [r["loss"] for r in mine]
        loss_ax.plot(its, loss, lw=0.6, alpha=0.4)
        loss_ax.plot(its, _moving_average(loss, 10), lw=1.4, label=method,
                     color=loss_ax.lines[-1].get_color())
        lr_ax.plot(its, [r["lr_img"] for r in mine], label=f"{method} lr_img")
        lr_ax.plot(its, [r["lr_txt"] for r in mine], "--", label=f"{method} lr_txt")
        scored = [r for r in records if _series(r) == method and "it" in r and "r_mean" in r]
        if scored:
            eval_ax.plot([r["it"] for r in scored], [r["r_mean"] for r in scored], "o-", label=method)
    final = [r for r in records if r.get("stage") == "eval"]
    if final:
        methods = [(m, v) for m, v in final[-1].items() if m != "stage" and isinstance(v, (int, float))]
        for method, value in methods:   # named in the legend: close values would overprint as text
            eval_ax.axhline(value, ls="--", lw=0.8, color=f"C{len(eval_ax.lines)}",
                            label=f"{method} {value:.2f}")
    loss_ax.set(title="matching loss (line: mean of 10)", xlabel="iteration")
    lr_ax.set(title="learned student lrs", xlabel="iteration", yscale="log")
    eval_ax.set(title="r_mean from iteration 0: val probe (distill.eval_every);\n"
                      "dashed: the final test evaluation", xlabel="iteration",
                xlim=loss_ax.get_xlim())
    for ax in (loss_ax, lr_ax, eval_ax):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def save_sweep_plot(sweep: dict, path: str | Path) -> Path:
    """Left: r_mean against pairs per set (log-log), a line per method with its ± std band --
    distilled sets solid, real-pair sets dashed, `full` flat (it does not depend on the budget),
    the ceilings (oracle, chance) dotted. Right: each set over the best real-pair set at the same
    budget, so the answer (above 1 or not) reads at a glance."""
    plt = _pyplot()
    fig, (ax, ratio_ax) = plt.subplots(1, 2, figsize=(11.5, 4.4))
    budgets = sorted(sweep["budgets"], key=int)
    best_real = {n: max((row["r_mean"] for row in sweep["budgets"][n].values()
                         if row.get("kind") == "real pairs"), default=None) for n in budgets}
    for method in sweep["methods"]:
        points = [(n, sweep["budgets"][n][method]) for n in budgets if method in sweep["budgets"][n]]
        if not points:
            continue
        kind = points[0][1].get("kind")
        style = "-." if kind == "all data" else "s--" if kind == "real pairs" else "o-"
        xs = [int(n) for n, _ in points]
        mean = np.array([row["r_mean"] for _, row in points])
        std = np.array([row["std"] for _, row in points])
        line, = ax.plot(xs, mean, style, label=method, lw=1.0 if kind == "all data" else 1.6, ms=4)
        ax.fill_between(xs, mean - std, mean + std, color=line.get_color(), alpha=0.15, lw=0)
        if kind != "all data" and all(best_real[n] for n, _ in points):
            ratio_ax.plot(xs, mean / np.array([best_real[n] for n, _ in points]), style,
                          color=line.get_color(), label=method, lw=1.6, ms=4)
    for name, row in sweep.get("ceilings", {}).items():
        ax.axhline(row["r_mean"], ls=":", lw=1.0, color="black" if name == "oracle" else "grey",
                   label=f"{name} {row['r_mean']:.1f}")
    ratio_ax.axhline(1.0, color="black", lw=0.8)
    ax.set(xscale="log", yscale="log", xlabel="pairs per set", ylabel="test r_mean",
           title=f"{sweep['dataset']}: r_mean against budget (band: ± std over students)")
    ratio_ax.set(xscale="log", xlabel="pairs per set", ylabel="r_mean / best real-pair set",
                 title="each set against the best real pairs at its budget")
    for axis in (ax, ratio_ax):
        axis.set_xticks([int(n) for n in budgets], [str(n) for n in budgets])
        axis.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return _save(fig, path)


def _moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


__all__ = ["denormalize", "read_metrics", "save_image_grid", "save_pair_panel",
           "save_similarity_heatmap", "save_sweep_plot", "save_training_curves"]
