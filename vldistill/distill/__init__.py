"""Stage 2, distill: the synthetic set learned by trajectory matching against the buffer's
experts (`stage`: the set's initialisation, the `Distiller` with its optimizers and curves,
and the stage's entry `run_distill`), the checkpoints a killed run resumes from bit for bit
(`checkpoint`), the guard that stops a run whose values blow up (`divergence`) and the
peak-memory estimate checked before it starts (`memory`). It may import the configuration
layer, `vldistill.runtime`, `vldistill.data`, `vldistill.models`, `vldistill.algorithms`,
`vldistill.buffer` and `vldistill.evaluation`: the stage probes its set with evaluation's fixed
protocol for the distillation curves and may start from coreset pairs, so it sits above
evaluation though it runs before it. Only the top (pipeline, pre-flight, CLI) imports it
(tests/test_architecture.py's `LAYERS`).
"""
