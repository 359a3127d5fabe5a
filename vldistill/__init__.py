"""vldistill: distill an image-text dataset into a few hundred synthetic pairs plus a learned
similarity matrix (LoRS on bi-trajectory matching, with TESLA's constant-memory gradient).

The library imports without the CLI; `vldistill.cli` is a thin layer on top. Its layers, lowest
first, each importing only itself and the layers below (tests/test_architecture.py): the
configuration (config, errors, fidelity, config_merge, registry, options), runtime/, data/ and
models/, algorithms/, buffer/, evaluation/, distill/, reporting/, and the top (configio,
config_help, preflight, rundir, pipeline, sweep, cli). `vldistill.losses`,
`vldistill.similarity` and `vldistill.retrieval` are the DESIGN's public paths, re-exports.
"""
__version__ = "0.1.0"
