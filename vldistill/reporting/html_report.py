"""report.html: one self-contained page about a run (every image inline as a base64 PNG, no
script, no outside file), written beside the PNGs it shows.

    RUN_DIR/report/report.html            results, transfer, curves, and per set:
    RUN_DIR/report/METHOD_grid.png        synthetic images with their decoded captions
    RUN_DIR/report/METHOD_similarity.png  learned similarity, strongest off-diagonal circled
    RUN_DIR/report/METHOD_pairs.png       those pairs side by side with their captions
    RUN_DIR/report/curves.png             matching loss, lrs, eval r_mean over iterations

The page is rendered from `templates/report.html.j2` by jinja2 with autoescaping on, so a
caption or a label can never inject markup.
"""
from __future__ import annotations

import base64
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from .figures import (denormalize, save_image_grid, save_pair_panel, save_similarity_heatmap,
                      save_training_curves)
from ..runtime.io import write_text
from .report import (LEGEND, SetInspection, inspect_set, method_rows, results_notes, results_title,
                     tower_settings, transfer_rows)
from ..algorithms.synset import DistilledSet


@dataclass(kw_only=True)
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


def _results_context(results: dict | None) -> dict | None:
    if not results:
        return None
    return {"title": results_title(results), "methods": method_rows(results),
            "transfer": transfer_rows(results) if results.get("towers") else None,
            "tower_settings": tower_settings(results),
            "notes": results_notes(results)}


def _set_context(method: str, synthetic: DistilledSet, inspection: SetInspection,
                 images: torch.Tensor, out_dir: Path) -> dict:
    """One set's part of the page; writes its PNGs."""
    first = [top[0][0] for top in inspection.after]
    context = {"method": method, "n_pairs": synthetic.n_pairs, "kind": synthetic.similarity.kind,
               "lr_img": synthetic.lr_img, "lr_txt": synthetic.lr_txt,
               "grid": png_data_uri(save_image_grid(images, first, out_dir / f"{method}_grid.png")),
               "thumbs": [png_data_uri(thumbnail(img)) for img in images],
               "before": inspection.before, "after": inspection.after, "moved": inspection.moved,
               "mined": [{"i": i, "j": j, "value": v} for i, j, v in inspection.pairs]}
    if inspection.pairs:
        heat = save_similarity_heatmap(synthetic.similarity_matrix(), out_dir / f"{method}_similarity.png",
                                       f"{method}: learned similarity ({synthetic.similarity.kind})",
                                       inspection.pairs)
        panel = save_pair_panel(images, inspection.pairs, first, out_dir / f"{method}_pairs.png")
        context |= {"heatmap": png_data_uri(heat), "panel": png_data_uri(panel)}
    return context


def render_page(context: dict) -> str:
    """report.html from its template, every value escaped."""
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
    env = Environment(loader=PackageLoader("vldistill.reporting", "templates"),
                      autoescape=select_autoescape(["j2", "html"], default_for_string=True),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.get_template("report.html.j2").render(context)


def write_report(inputs: ReportInputs, out_dir: str | Path) -> tuple[Path, dict[str, SetInspection]]:
    """Write the PNGs and report.html into out_dir; returns the page and each set's inspection."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    curves = save_training_curves(inputs.records or [], out_dir / "curves.png")
    inspections, sets = {}, []
    for method, synthetic in inputs.sets.items():
        inspection = inspect_set(synthetic, inputs.text_bank, inputs.captions, inputs.top_k,
                                 inputs.n_false_negatives)
        images = denormalize(synthetic.images, synthetic.card.get("mean", inputs.mean),
                             synthetic.card.get("std", inputs.std))
        sets.append(_set_context(method, synthetic, inspection, images, out_dir))
        inspections[method] = inspection
    page = render_page({"title": inputs.title, "written": time.strftime("%Y-%m-%d %H:%M"),
                        "legend": LEGEND, "results": _results_context(inputs.results),
                        "curves": png_data_uri(curves) if curves is not None else None,
                        "sets": sets})
    return write_text(out_dir / "report.html", page), inspections


__all__ = ["ReportInputs", "png_data_uri", "render_page", "thumbnail", "write_report"]
