"""report.html: one self-contained page about a run (every image inline as a base64 PNG, no
script, no outside file), written beside the PNGs it shows.

    RUN_DIR/report/report.html            results, transfer, curves, and per set:
    RUN_DIR/report/METHOD_grid.png        synthetic images with their decoded captions
    RUN_DIR/report/METHOD_similarity.png  learned similarity, strongest off-diagonal circled
    RUN_DIR/report/METHOD_pairs.png       those pairs side by side with their captions
    RUN_DIR/report/curves.png             matching loss, lrs, eval r_mean over iterations
"""
from __future__ import annotations

import base64
import html
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from .figures import (denormalize, save_image_grid, save_pair_panel, save_similarity_heatmap,
                      save_training_curves)
from .io import write_text
from .report import (LEGEND, SetInspection, TEST_NOTE, html_table, inspect_set, method_rows,
                     results_title, selected_on_test, tower_settings, transfer_rows)
from .synset import DistilledSet

STYLE = """
body { font-family: sans-serif; margin: 1.5em; max-width: 1400px; color: #222; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: left; vertical-align: middle; }
th { background: #f2f2f2; }
img.figure { max-width: 100%; border: 1px solid #ddd; }
img.thumb { width: 64px; height: 64px; image-rendering: pixelated; }
.score { color: #666; font-size: 11px; }
.note { color: #555; font-size: 13px; }
"""


@dataclass
class ReportInputs:
    """What the page is made from (all optional but the sets)."""

    title: str
    sets: dict[str, DistilledSet]
    text_bank: torch.Tensor                 # training captions' text embeddings (n_captions, d)
    captions: Sequence[str]                 # training captions
    mean: Sequence[float]                   # pixel normalization of the data
    std: Sequence[float]
    results: dict | None = None             # results.json
    records: list[dict] | None = None       # metrics.jsonl
    top_k: int = 3                          # decoded captions per pair
    n_false_negatives: int = 10


def png_data_uri(path_or_bytes: Path | bytes) -> str:
    data = path_or_bytes.read_bytes() if isinstance(path_or_bytes, Path) else path_or_bytes
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def thumbnail(image: torch.Tensor, side: int = 64) -> bytes:
    """A [0, 1] (3, H, W) image as PNG bytes, scaled up by pixel repetition."""
    from PIL import Image
    pixels = (image.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()
    out = io.BytesIO()
    Image.fromarray(pixels).resize((side, side), Image.NEAREST).save(out, format="PNG")
    return out.getvalue()


def _img(uri: str, alt: str, css: str = "figure") -> str:
    return f'<img class="{css}" src="{uri}" alt="{html.escape(alt)}">'


def _scored(top: list[tuple[str, float]]) -> str:
    return "<br>".join(f'{html.escape(c)} <span class="score">{s:.3f}</span>' for c, s in top)


def _results_section(results: dict | None) -> str:
    if not results:
        return "<h2>Results</h2><p class='note'>no results.json yet: run `vldistill eval`.</p>"
    body = (f"<h2>Results</h2><p class='note'>{html.escape(LEGEND)}</p>"
            f"<p>{html.escape(results_title(results))}</p>" + html_table(method_rows(results)))
    if results.get("towers"):
        body += ("<h3>Cross-architecture transfer (r_mean ± std)</h3>" + html_table(transfer_rows(results))
                 + "<pre>" + html.escape(tower_settings(results)) + "</pre>")
    if selected_on_test(results):
        body += f"<p class='note'>{html.escape(TEST_NOTE)}</p>"
    return body


def _set_section(method: str, synthetic: DistilledSet, inspection: SetInspection,
                 images: torch.Tensor, out_dir: Path) -> str:
    grid = save_image_grid(images, [top[0][0] for top in inspection.after], out_dir / f"{method}_grid.png")
    thumbs = [png_data_uri(thumbnail(img)) for img in images]
    lrs = f"learned lrs: image {synthetic.lr_img:.4g}, text {synthetic.lr_txt:.4g}"
    parts = [f"<h2>Set: {html.escape(method)}</h2>",
             f"<p class='note'>{synthetic.n_pairs} pairs, similarity {synthetic.similarity.kind}, {lrs}</p>",
             "<h3>Synthetic images with their nearest real caption</h3>", _img(png_data_uri(grid), f"{method} grid")]
    if inspection.pairs:
        heat = save_similarity_heatmap(synthetic.similarity_matrix(), out_dir / f"{method}_similarity.png",
                                       f"{method}: learned similarity ({synthetic.similarity.kind})",
                                       inspection.pairs)
        panel = save_pair_panel(images, inspection.pairs, [top[0][0] for top in inspection.after],
                                out_dir / f"{method}_pairs.png")
        rows = "".join(
            f"<tr><td>{n + 1}</td><td>S[{i},{j}] = {v:.3f}</td><td>{_img(thumbs[i], f'#{i}', 'thumb')}</td>"
            f"<td>#{i}<br>{_scored(inspection.after[i][:1])}</td><td>{_img(thumbs[j], f'#{j}', 'thumb')}</td>"
            f"<td>#{j}<br>{_scored(inspection.after[j][:1])}</td></tr>"
            for n, (i, j, v) in enumerate(inspection.pairs))
        parts += ["<h3>Learned similarity and the mined false negatives</h3>",
                  "<p class='note'>The largest off-diagonal entries S[i, j]: image i is trained to "
                  "partly match text j.</p>", _img(png_data_uri(heat), f"{method} similarity"),
                  "<table><tr><th>#</th><th>entry</th><th>image i</th><th>caption i</th>"
                  f"<th>image j</th><th>caption j</th></tr>{rows}</table>",
                  _img(png_data_uri(panel), f"{method} pairs")]
    rows = "".join(
        f"<tr><td>{i}</td><td>{_img(thumbs[i], f'#{i}', 'thumb')}</td>"
        f"<td>{html.escape(inspection.before[i])}</td><td>{_scored(inspection.after[i])}</td>"
        f"<td>{inspection.moved[i]:.3f}</td></tr>" for i in range(synthetic.n_pairs))
    parts += ["<h3>Every pair: caption before and after distillation</h3>",
              "<p class='note'>before: the real caption the text embedding started from; after: the "
              "nearest real training captions of the distilled embedding (cosine); moved: cosine "
              "between the starting and the distilled embedding.</p>",
              "<table><tr><th>#</th><th>image</th><th>before</th><th>after (top-k, cosine)</th>"
              f"<th>moved</th></tr>{rows}</table>"]
    return "\n".join(parts)


def write_report(inputs: ReportInputs, out_dir: str | Path) -> tuple[Path, dict[str, SetInspection]]:
    """Write the PNGs and report.html into out_dir; returns the page and each set's inspection."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = [f"<h1>{html.escape(inputs.title)}</h1>",
             f"<p class='note'>written {time.strftime('%Y-%m-%d %H:%M')}</p>",
             _results_section(inputs.results)]
    curves = save_training_curves(inputs.records or [], out_dir / "curves.png")
    if curves is not None:
        parts += ["<h2>Training curves</h2>", _img(png_data_uri(curves), "training curves")]
    inspections = {}
    for method, synthetic in inputs.sets.items():
        inspection = inspect_set(synthetic, inputs.text_bank, inputs.captions, inputs.top_k,
                                 inputs.n_false_negatives)
        images = denormalize(synthetic.images, synthetic.card.get("mean", inputs.mean),
                             synthetic.card.get("std", inputs.std))
        parts.append(_set_section(method, synthetic, inspection, images, out_dir))
        inspections[method] = inspection
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(inputs.title)}"
            f"</title><style>{STYLE}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
    return write_text(out_dir / "report.html", page), inspections


__all__ = ["ReportInputs", "png_data_uri", "thumbnail", "write_report"]
