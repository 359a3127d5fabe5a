"""The algorithms the stages call, free of any stage's orchestration: the soft-target
contrastive losses (`losses`), the similarity parameterizations (`similarity`), one trajectory
matching iteration (`matching`: TESLA and the full unroll), a distilled set and its card
(`synset`), training and scoring a student on real pairs (`training`), Recall@K (`retrieval`),
exact nearest neighbours (`neighbours`) and RepBlend's frozen-backbone features (`repblend`).
It may import the configuration layer, `vldistill.runtime`, `vldistill.data` and
`vldistill.models`; the buffer, evaluation, distill and reporting packages import it, never
the other way (tests/test_architecture.py's `LAYERS`). `vldistill.losses`,
`vldistill.similarity` and `vldistill.retrieval` stay as the DESIGN's public paths.
"""
