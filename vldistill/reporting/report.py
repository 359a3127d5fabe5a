"""Results tables, and looking inside a distilled set.

Tables (markdown for the terminal; report.html shows the same rows):
- `results_table(results)`: one run's methods x IR@1/5/10, TR@1/5/10, r_mean, each mean ± std
  over seeds at the selected epoch, the final epoch's r_mean beside, then the cross-tower
  transfer table when the run evaluated on more towers.
  The ceilings of the test split follow as rows without ± (exact): `oracle (perfect ranker)`
  where the dataset knows which captions are true of which images, and `chance`.
- `compare_table(runs)`: one table over several runs (run x tower x method rows), the way
  papers present them.

Every row carries its epoch-selection rule; numbers chosen on the test split (the reference's
protocol, `eval.selection: test`) are marked † and footnoted, never shown as plain numbers.

Inspection: `decode_captions` (nearest real captions of synthetic text embeddings, by cosine,
through faiss), `inspect_set` (captions before and after distillation, how far each text
embedding moved, the strongest off-diagonal similarities: the mined false negatives).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from .answer import verdict
from ..algorithms.neighbours import knn

COLUMNS = (("IR@1", "img_r1"), ("IR@5", "img_r5"), ("IR@10", "img_r10"),
           ("TR@1", "txt_r1"), ("TR@5", "txt_r5"), ("TR@10", "txt_r10"))
TEST_MARK = "†"
FINAL_MARK = "‡"
TEST_NOTE = (f"{TEST_MARK} epoch chosen on the TEST split (LoRS's protocol, "
             "eval.selection: test): optimistic, not comparable with val-selected numbers")
FINAL_NOTE = (f"{FINAL_MARK} the last epoch's numbers, nothing selected (VL-distill's protocol, "
              "eval.selection: final)")
LEGEND = ("IR = text→image, TR = image→text Recall@K (%), r_mean = mean of the six; "
          f"mean ± std over seeds at the epoch chosen on val (on test where marked {TEST_MARK}, "
          f"the last epoch where marked {FINAL_MARK}: VL-distill's protocol); final = last epoch")
# (key in results.json "ceilings", row label, footnote)
CEILINGS = (("oracle", "oracle (perfect ranker)",
             "oracle (perfect ranker): the expected recall of scores that are 1 where a caption is true "
             "of an image and 0 elsewhere, ties broken at random (captions true of many images cap it)"),
            ("chance", "chance", "chance: random scores"))

Table = tuple[list[str], list[list[str]]]       # header, rows of cells


def _ordered(methods: dict) -> list[str]:
    """Registered methods in registration order, then any others (an older run's) by name."""
    from ..evaluation.methods import METHODS
    known = [m for m in METHODS.names() if m in methods]
    return known + sorted(m for m in methods if m not in known)


def _on_test(summary: dict) -> bool:
    return "TEST" in summary.get("selection", "")


def _mark(summary: dict) -> str:
    """† test-selected, ‡ the final epoch, nothing for val-selected numbers."""
    if _on_test(summary):
        return TEST_MARK
    return FINAL_MARK if summary.get("selection", "").startswith("final") else ""


def _pm(summary: dict, key: str, digits: int = 1) -> str:
    return f"{summary[key]:.{digits}f} ± {summary.get(f'{key}_std', 0.0):.{digits}f}"


def _metric_cells(summary: dict) -> list[str]:
    final = summary.get("final") or {}
    return ([_pm(summary, key) for _, key in COLUMNS] + [_pm(summary, "r_mean", 2)]
            + [_pm(final, "r_mean", 2) if "r_mean" in final else "-", str(summary.get("n_seeds", ""))])


def _method_label(name: str, summary: dict) -> str:
    return f"{name} {_mark(summary)}".rstrip()


def _source(results: dict) -> str | None:
    """The image tower the sets were distilled with (None: no distilled set was evaluated)."""
    ev = results.get("eval", {})
    return ev["distilled_on"] if "distilled_on" in ev else ev.get("image_tower")


def _towers(results: dict) -> list[tuple[str, dict, bool]]:
    """(tower label, its methods, distilled on it?), the config's own tower first. An extra tower
    with the distilled-on architecture but another protocol (a frozen backbone) is not "it"."""
    source = _source(results)
    ev = results.get("eval", {})
    home = ev.get("image_tower", "?")

    def same(settings: dict, label: str) -> bool:
        return (settings.get("image_tower", label) == source
                and settings.get("frozen_backbone", False) == ev.get("frozen_backbone", False))
    return [(home, results["methods"], home == source)] + [
        (label, entry["methods"], same(entry.get("settings", {}), label))
        for label, entry in results.get("towers", {}).items()]


def method_rows(results: dict) -> Table:
    """One run on its distilled-on tower: a row per method."""
    header = ["method"] + [name for name, _ in COLUMNS] + ["r_mean", "final r_mean", "seeds", "student lr"]
    rows = [[_method_label(name, results["methods"][name])] + _metric_cells(results["methods"][name])
            + [_lr_cell(results["methods"][name])] for name in _ordered(results["methods"])]
    ceilings = results.get("ceilings", {})
    rows += [[label] + [f"{ceilings[name][key]:.1f}" for _, key in COLUMNS]
             + [f"{ceilings[name]['r_mean']:.2f}", "-", "-", "-"] for name, label, _ in CEILINGS if name in ceilings]
    return header, rows


def _lr_cell(summary: dict) -> str:
    """How the row's students got their lr (`eval.lr_policy`): `0.1 (fixed)`, `own (authors)`."""
    if "lr_policy" not in summary:
        return "-"
    lr = summary.get("lr")
    return f"{lr:g} ({summary['lr_policy']})" if isinstance(lr, (int, float)) else f"{lr} ({summary['lr_policy']})"


def transfer_rows(results: dict) -> Table:
    """Cross-architecture: a row per method, a column per evaluation tower (r_mean ± std)."""
    towers = _towers(results)
    header = ["method"] + [f"{label} (distilled on)" if own else label for label, _, own in towers]
    names = _ordered({m: None for _, methods, _ in towers for m in methods})
    rows = []
    for name in names:
        cells = [name]
        for _, methods, _ in towers:
            s = methods.get(name)
            cells.append("-" if s is None else f"{_pm(s, 'r_mean', 2)} {_mark(s)}".rstrip())
        rows.append(cells)
    return header, rows


def compare_rows(runs: Sequence[tuple[str, dict]]) -> Table:
    """Several runs in one table: a row per run x evaluation tower x method."""
    header = (["run", "dataset", "pairs", "eval tower", "method", "selection"]
              + [name for name, _ in COLUMNS] + ["r_mean", "final r_mean", "seeds"])
    rows = []
    for label, results in runs:
        for tower, methods, own in _towers(results):
            for name in _ordered(methods):
                s = methods[name]
                rows.append([label, str(results.get("dataset", "?")), str(results.get("n_pairs", "?")),
                             tower + (" (distilled on)" if own else ""), name,
                             {TEST_MARK: f"TEST {TEST_MARK}", FINAL_MARK: f"final {FINAL_MARK}"}.get(_mark(s), "val")]
                            + _metric_cells(s))
    return header, rows


def markdown(table: Table) -> str:
    header, rows = table
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def results_notes(results: dict) -> str:
    """The footnotes a run's tables need: † test-selected, ‡ final-epoch numbers, the ceilings."""
    ceilings = "; ".join(note for name, _, note in CEILINGS if name in results.get("ceilings", {}))
    return "\n\n".join(part for part in (notes(_all_summaries(results)),
                                         ceilings and f"{ceilings}. Exact, on the test split") if part)


def notes(summaries: list[dict]) -> str:
    """The footnotes the marks in these summaries need (empty if none)."""
    marks = {_mark(s) for s in summaries}
    return "\n\n".join(note for mark, note in ((TEST_MARK, TEST_NOTE), (FINAL_MARK, FINAL_NOTE))
                       if mark in marks)


def _all_summaries(results: dict) -> list[dict]:
    return [s for _, methods, _ in _towers(results) for s in methods.values()]


def results_title(results: dict) -> str:
    """Dataset, pair count, and which tower the methods table was evaluated on."""
    home, _, own = _towers(results)[0]
    source = _source(results)
    where = " (the distilled-on tower)" if own else (f"; the sets were distilled on {source}" if source else "")
    stds = {s.get("std", "sample") for s in _all_summaries(results)}
    std = ("; ± is the population std (n, as the reference)" if stds == {"population"} else
           "; ± is the sample std (n − 1)" if stds == {"sample"} else "")
    return (f"{results.get('dataset', '?')}, {results.get('n_pairs', '?')} pairs, test split, "
            f"evaluated on {home}{where}{std}")


def results_table(results: dict) -> str:
    """One run's results as markdown: the methods table, then the transfer table if any."""
    text = f"{results_title(results)}\n{LEGEND}\n\n{markdown(method_rows(results))}"
    if results.get("towers"):
        text += ("\n\nCross-architecture transfer: r_mean (val-selected, ± std over seeds) of "
                 "students with other image towers, each with its own recipe\n\n"
                 + markdown(transfer_rows(results)) + "\n\n" + tower_settings(results))
    answer = verdict(results["methods"], results.get("n_pairs", "?"))
    return "\n\n".join(part for part in (text, answer, results_notes(results)) if part)


def tower_settings(results: dict) -> str:
    """One line per extra evaluation tower: the recipe its students trained with."""
    lines = []
    for label, entry in results.get("towers", {}).items():
        s = entry.get("settings", {})
        lr = "learned lrs" if s.get("lr") is None else f"lr {s['lr']:g}"
        frozen = " (frozen backbone: two heads train)" if s.get("frozen_backbone") else ""
        lines.append(f"- {label}: {s.get('image_tower', label)}{frozen}, {lr}, {s.get('epochs')} epochs, "
                     f"augment {s.get('augment')}, full: lr {s.get('full_lr')}, "
                     f"{s.get('full_epochs')} epochs")
    return "\n".join(lines)


def compare_table(runs: Sequence[tuple[str, dict]]) -> str:
    """Several runs' results.json in one markdown table."""
    summaries = [s for _, r in runs for s in _all_summaries(r)]
    return "\n\n".join(part for part in (f"Test split; {LEGEND}", markdown(compare_rows(runs)),
                                           notes(summaries)) if part)


# ------------------------------------------------------------------ inspection
@torch.no_grad()
def decode_captions(embeddings: torch.Tensor, bank: torch.Tensor, captions: Sequence[str],
                    k: int = 1, backend: str = "faiss") -> list[list[tuple[str, float]]]:
    """For each embedding, the k nearest distinct captions of the bank by cosine (faiss)."""
    unique: dict[str, int] = {}
    for i, caption in enumerate(captions):
        unique.setdefault(caption, i)
    rows = torch.tensor(list(unique.values()))
    names = list(unique)
    found = knn(embeddings, bank[rows], min(k, len(names)), "cosine", backend=backend)
    return [[(names[j], float(s)) for s, j in zip(scores.tolist(), idx.tolist())]
            for scores, idx in zip(found.scores, found.indices)]


def false_negatives(matrix: torch.Tensor, k: int = 10) -> list[tuple[int, int, float]]:
    """The k largest off-diagonal entries S[i, j] (i != j), largest first: pairs the learned
    similarity treats as partly matching, i.e. the false negatives LoRS mined."""
    values = matrix.detach().float().cpu().clone()
    values.fill_diagonal_(float("-inf"))
    top = values.flatten().topk(min(k, values.numel() - len(values)))
    n = values.shape[1]
    return [(int(i) // n, int(i) % n, float(v)) for v, i in zip(top.values, top.indices)]


@dataclass
class SetInspection:
    """What a report shows about one set."""

    before: list[str]                       # the caption each pair started from ("" if unknown)
    after: list[list[tuple[str, float]]]    # top-k nearest real captions of the final embedding
    moved: list[float]                      # cosine between the initial and the final embedding
    pairs: list[tuple[int, int, float]]     # strongest off-diagonal similarities (empty: identity)


def inspect_set(synthetic, text_bank: torch.Tensor, captions: Sequence[str], k: int = 3,
                n_pairs: int = 10) -> SetInspection:
    """Decode a set's text embeddings against the training captions, before and after."""
    init = synthetic.card.get("init_captions") or []
    after = decode_captions(synthetic.text_embeddings, text_bank, captions, k)
    if len(init) == synthetic.n_pairs:
        start = text_bank[torch.tensor(init)].float()
        moved = F.cosine_similarity(start, synthetic.text_embeddings.float(), dim=1).tolist()
        before = [captions[j] for j in init]
    else:
        moved, before = [float("nan")] * synthetic.n_pairs, [""] * synthetic.n_pairs
    pairs = [] if synthetic.similarity.kind == "identity" else false_negatives(
        synthetic.similarity_matrix(), n_pairs)
    return SetInspection(before, after, moved, pairs)


def decoded_text(synthetic, text_bank: torch.Tensor, captions: Sequence[str], k: int = 3,
                 n_pairs: int = 10) -> str:
    """The set decoded for a terminal: per pair, the caption it started from, its k nearest
    real captions now (cosine) and the cosine to its starting embedding; then the strongest
    off-diagonal similarities (the mined pairs) with both captions."""
    inspection = inspect_set(synthetic, text_bank, captions, k, n_pairs)
    lines = [f"{synthetic.n_pairs} pairs, similarity {synthetic.similarity.kind}, "
             f"learned lrs image {synthetic.lr_img:.4g} text {synthetic.lr_txt:.4g}", ""]
    for i, top in enumerate(inspection.after):
        lines.append(f"#{i}  moved {inspection.moved[i]:.3f}  before: {inspection.before[i] or '?'}")
        lines += [f"      {cosine:.3f}  {caption}" for caption, cosine in top]
    if inspection.pairs:
        lines += ["", "strongest off-diagonal similarities (mined pairs): S[i,j], caption i | caption j"]
        lines += [f"S[{i},{j}] = {v:.3f}  {inspection.after[i][0][0]} | {inspection.after[j][0][0]}"
                  for i, j, v in inspection.pairs]
    return "\n".join(lines) + "\n"


def card_captions(inspection: SetInspection) -> dict:
    """The decoded captions as the set card stores them."""
    return {"before": inspection.before,
            "after": [[{"caption": c, "cosine": round(s, 4)} for c, s in top] for top in inspection.after],
            "cosine_to_init": [round(m, 4) for m in inspection.moved],
            "false_negatives": [{"i": i, "j": j, "s": round(v, 4)} for i, j, v in inspection.pairs]}


__all__ = ["SetInspection", "card_captions", "compare_rows", "compare_table", "decode_captions",
           "decoded_text",
           "false_negatives", "inspect_set", "markdown", "method_rows",
           "notes", "results_notes", "results_table", "results_title", "transfer_rows"]
