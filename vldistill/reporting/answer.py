"""The question every user brings: does the best distilled set beat the best real pairs?

A gap counts only beyond both stds: the best distilled set's mean minus its std must clear
the best real-pair set's (random, herding, kcenter, ...) mean plus its std. `verdict` answers
for one run (the line under `make demo`'s table); `sweep_table` and `sweep_answer` for a
budget sweep's sweep.json (`vldistill.sweep`). Rows say what they are in results.json
(`kind`: distilled | real pairs | all data), so no registry is needed to read them.
"""
from __future__ import annotations

CEILING_LABELS = {"oracle": "oracle (perfect ranker)", "chance": "chance"}


def _best(methods: dict, kind: str) -> tuple[str, dict] | None:
    rows = [(name, s) for name, s in methods.items() if s.get("kind") == kind]
    return max(rows, key=lambda row: row[1]["r_mean"]) if rows else None


def _mean_std(summary: dict) -> tuple[float, float]:
    return summary["r_mean"], summary.get("r_mean_std", summary.get("std", 0.0))


def compare_best(methods: dict) -> tuple[str, float, str, float, bool] | None:
    """(best distilled, its r_mean, best real-pair set, its r_mean, beyond both stds?) or None
    when the rows lack one of the two kinds."""
    distilled, real = _best(methods, "distilled"), _best(methods, "real pairs")
    if distilled is None or real is None:
        return None
    (d_name, d), (r_name, r) = distilled, real
    (dm, ds), (rm, rs) = _mean_std(d), _mean_std(r)
    return d_name, dm, r_name, rm, dm - ds > rm + rs


def verdict(methods: dict, n_pairs: int | str) -> str:
    """One line: at this budget, does the best distilled set beat the best real pairs?"""
    best = compare_best(methods)
    if best is None:
        return ""
    d_name, dm, r_name, rm, beyond = best
    ds, rs = _mean_std(methods[d_name])[1], _mean_std(methods[r_name])[1]
    if beyond:
        how = f"beats the best real pairs beyond both stds ({dm / rm:.1f}x)" if rm > 0 else "beats the best real pairs"
    elif dm > rm:
        how = "is ahead of the best real pairs, but within the stds"
    else:
        how = "does not beat the best real pairs"
    return (f"Answer at {n_pairs} pairs: the best distilled set, {d_name} {dm:.2f} ± {ds:.2f}, {how}, "
            f"{r_name} {rm:.2f} ± {rs:.2f}.")


def _budgets(sweep: dict) -> list[str]:
    return sorted(sweep["budgets"], key=int)


def sweep_table(sweep: dict) -> str:
    """Markdown: a row per budget, a column per method (r_mean ± std over students), then the
    ceilings and how the rows were evaluated."""
    methods = [m for m in sweep["methods"] if any(m in sweep["budgets"][n] for n in sweep["budgets"])]
    lines = ["| pairs | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for n in _budgets(sweep):
        rows = sweep["budgets"][n]
        best = max((rows[m]["r_mean"] for m in methods if m in rows and m != "full"), default=None)
        cells = []
        for m in methods:
            if m not in rows:
                cells.append("-")
                continue
            cell = f"{rows[m]['r_mean']:.2f} ± {rows[m]['std']:.2f}"
            cells.append(f"**{cell}**" if rows[m]["r_mean"] == best else cell)
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    any_row = next((r for n in _budgets(sweep) for r in sweep["budgets"][n].values()), {})
    by_policy: dict[str, list[str]] = {}
    for n in _budgets(sweep):
        for m, r in sweep["budgets"][n].items():
            names = by_policy.setdefault(str(r.get("lr_policy")), [])
            names += [] if m in names else [m]
    ceilings = ", ".join(f"{CEILING_LABELS.get(k, k)} r_mean {v['r_mean']:.2f}"
                         for k, v in sweep.get("ceilings", {}).items())
    notes = [f"{sweep['dataset']} test split, r_mean ± std over {any_row.get('n', '?')} students; "
             f"{any_row.get('selection', '')}; bold: the best set at that budget.",
             "Student lr policy: " + "; ".join(f"{p}: {', '.join(ms)}" for p, ms in by_policy.items())
             + f". Budget rule: {sweep['rule']}."]
    if ceilings:
        notes.append(f"Ceilings on the same split: {ceilings}.")
    return "\n".join(lines) + "\n\n" + "\n".join(notes)


def sweep_answer(sweep: dict) -> str:
    """Where the best distilled set beats the best real pairs beyond both stds, per budget."""
    lines = [verdict(sweep["budgets"][n], n) for n in _budgets(sweep)]
    lines = [line for line in lines if line]
    wins = [n for n in _budgets(sweep) if (c := compare_best(sweep["budgets"][n])) and c[4]]
    head = (f"Distilled beats the best real pairs beyond both stds at {', '.join(wins)} pairs."
            if wins else "Distilled beats the best real pairs beyond both stds at no budget here.")
    return "\n".join([head, *lines])


__all__ = ["compare_best", "sweep_answer", "sweep_table", "verdict"]
