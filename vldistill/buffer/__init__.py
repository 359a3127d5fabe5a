"""Stage 1, the buffer: expert students trained on the real pairs (`experts`, with the stage's
entry `run_buffer`) and the trajectory store their per-epoch snapshots go to (`store`), which
distillation and the coresets read. "Buffer" names this one concept everywhere: the
`vldistill buffer` command, the config's `buffer` section, RUN_DIR/buffer/ and this package.
It may import the configuration layer, `vldistill.runtime`, `vldistill.data`,
`vldistill.models` and `vldistill.algorithms`; evaluation, distill and reporting may import it
(tests/test_architecture.py's `LAYERS`).
"""
