"""Stage 4, reporting: what a run found, for people. Results tables, decoded captions and the
mined false negatives (`report`), the one-line answer to "does a distilled set beat real
pairs?" (`answer`), the PNGs (`figures`) and report.html rendered from
`templates/report.html.j2` (`html_report`). It reads what the other stages wrote and may
import every layer below it (the configuration layer, `vldistill.runtime`, `vldistill.data`,
`vldistill.models`, `vldistill.algorithms`, `vldistill.buffer`, `vldistill.evaluation`,
`vldistill.distill`); only the top (pipeline, sweep, CLI) imports it
(tests/test_architecture.py's `LAYERS`).
"""
