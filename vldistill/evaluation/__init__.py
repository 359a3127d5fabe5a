"""Stage 3, evaluation: fresh students trained on a set, on real-pair coresets or on all the
data and scored by Recall@K (`evaluate`, the paper's Algorithm 2 for one seed), the methods by
name with their seeds, lr policies and summaries (`methods`, whose `evaluate_all` is the
stage), the coreset selections (`coresets`), augmentations of set images (`augment`), the
oracle and chance ceilings (`ceilings`), results.json (`results`) and the finished seeds kept
for a resumed evaluation (`seedlog`). It may import the configuration layer,
`vldistill.runtime`, `vldistill.data`, `vldistill.models`, `vldistill.algorithms` and
`vldistill.buffer` (the coresets embed the data with a stored expert); the distill stage (its
curves use this package's fixed probe and its sets may start from coreset pairs) and reporting
import it (tests/test_architecture.py's `LAYERS`).
"""
