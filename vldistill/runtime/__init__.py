"""The run machinery every stage shares: atomic writes of JSON and safetensors files (`io`), one
writer per run directory (`runlock`), clean stops on a scheduler's signal (`interrupts`), the
ranks of a torchrun job (`distributed`), every seed of a run from the run seed (`seeds`), and
the process's device, determinism switches, log and record of versions (`environment`). It
knows nothing of datasets, models or algorithms: it may import only the configuration layer
(`vldistill.config`, `vldistill.errors`, the package's version), and every other layer may
import it (the order is tests/test_architecture.py's `LAYERS`).
"""
