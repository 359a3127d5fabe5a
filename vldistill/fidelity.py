"""The two modes of a run (`fidelity`), and every setting where they differ.

`reference` makes a run behave as the authors' scripts do (LoRS_Distill at 8a712af for LoRS
and its evaluation; multimodal_dataset_distillation for VL-distill and RepBlend for RepBlend,
whose own differences are their methods' settings, `vldistill.evaluation.methods`,
`vldistill.algorithms.repblend`); `vldistill` is this project's choice.
Each difference is a config key whose default is null: `resolve(cfg)` (called by the loaders,
`vldistill.config_merge`) fills a null key from the run's mode, and a value the config gives
explicitly always wins. config.yaml records the resolved values, so a run directory says
exactly what ran. The README's table "vldistill and
the reference" is `difference_table()` (a test keeps them equal).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .config import Config

Value = Any | Callable[["Config"], Any]          # a constant, or computed from the (resolved) config


@dataclass(frozen=True)
class Difference:
    key: str            # dotted config key, null by default
    reference: Value
    vldistill: Value
    shown: tuple[str, str]      # the two values as the README shows them
    reference_does: str         # what the reference code does, in a few words
    why: str                    # why vldistill differs (or why it follows)

    def value(self, cfg: "Config") -> Any:
        chosen = self.reference if cfg.fidelity == "reference" else self.vldistill
        return chosen(cfg) if callable(chosen) else chosen


DIFFERENCES: tuple[Difference, ...] = (
    Difference("distill.loss_eps", 1e-6, 0.0, ("1e-6", "0 (exact)"),
               "WBCE as log(p + 1e-6), log(1 - p + 1e-6), sums over count + 1e-6",
               "exact log-sigmoid: the two agree while logits stay within ±5; where a tenth of "
               "them pass ±8 the reference's image gradient has cosine 0.95 with the exact one "
               "(0.76 at ±15), as NFNet + BERT runs at τ = 0.07 can reach"),
    Difference("model.head_dropout", 0.1, 0.0, ("0.1", "0"),
               "dropout 0.1 in the text head (and RepBlend's image head) in experts, every "
               "distillation step and evaluation",
               "the demo's students, trained on 100 pairs, are not regularised by it (table below); "
               "with dropout, both TESLA passes of a step share one mask here (the reference draws "
               "two, so its gradient is not that of the loss it sums)"),
    Difference("buffer.text_dropout", True, False, ("true", "false"),
               "experts put the whole model in train mode: frozen BERT's CLS recomputed per batch "
               "with dropout",
               "the text tower runs once per unique caption (cached, clean): experts are several "
               "times faster and see the features distillation and evaluation use"),
    Difference("buffer.backbone_per_batch", True, False, ("true", "false"),
               "RepBlend's experts run the frozen backbone on every batch of augmented images",
               "with model.frozen_backbone, the backbone's features of every plain (resized) image "
               "are computed once and cached: experts train only the heads on them, many times "
               "faster; the same as the reference when data.no_aug, without the augmentation otherwise"),
    Difference("buffer.drop_last", True, False, ("true", "false"),
               "expert epochs drop the last partial batch", "every pair is seen every epoch"),
    Difference("data.caption_cleaner", "reference", "strict", ("reference", "strict"),
               "strips . ! \" ( ) * # : ; ~ but keeps , and ? (11 % of Flickr30k and 5 % of COCO "
               "test captions differ)", "captions without punctuation the tower may weigh"),
    Difference("data.cache_images", False, True, ("false", "true"),
               "decodes every JPEG every epoch; augmented crops come from the original image",
               "decoded once into a uint8 tensor file: later epochs and runs never decode again "
               "(crops come from the resized square)"),
    Difference("distill.expert_order", "cycle", "random", ("cycle", "random"),
               "each expert once per shuffled pass over the experts",
               "an expert drawn at random each iteration (no measured difference)"),
    Difference("distill.init_draw", "captions", "images", ("captions", "images"),
               "synthetic pairs start from random caption entries: an image can start two pairs",
               "distinct images, so no two pairs start from the same image"),
    Difference("distill.init_augment", lambda cfg: not cfg.data.no_aug, False,
               ("when training augments", "false"),
               "with augmentation on, each synthetic image starts as one random augmented view",
               "the plain resized image"),
    Difference("distill.init_view_cache", 100, 0, ("100", "0"),
               "its Flickr30k loader caches the transformed image (`lru_cache(maxsize=100)` on "
               "`read_image`), so a pair drawn from one of the last 100 images read starts from "
               "that image's augmented view",
               "each pair its own view (with init_draw captions, two pairs of one image start "
               "apart); the views drawn are the reference's wherever no image repeats"),
    Difference("distill.lr_grad", "branch", "exact", ("branch", "exact"),
               "with merged branches, each learned lr's gradient still uses its own branch's "
               "denominator (d_img / (d_img + d_txt) of the merged gradient for lr_img)",
               "the gradient of the matching loss that is minimised"),
    Difference("distill.clamp_lr", False, True, ("false", "true"),
               "learned lrs are never clamped (they can turn negative)",
               "a linear lr is clamped at distill.min_lr"),
    Difference("distill.max_bad_steps", 1, 5, ("1", "5"),
               "a NaN image matching loss ends the run",
               "a non-finite iteration is skipped; 5 in a row stop the run (the last good "
               "checkpoint kept)"),
    Difference("eval.epochs", 101, 100, ("101", "100"),
               "101 training epochs (epoch 0 to 100)", "a round 100"),
    Difference("eval.lr_drop_epoch", lambda cfg: (cfg.eval.epochs - 1) // 2 + 1,
               lambda cfg: cfg.eval.epochs // 2, ("51", "epochs / 2"),
               "lr x0.1 after epoch 51 of 101", "half the epochs at each lr"),
    Difference("eval.first_scored_epoch", 1, lambda cfg: cfg.eval.val_every, ("1", "val_every"),
               "scored after epochs 1, 11, ..., 101", "scored after epochs 10, 20, ..., 100"),
    Difference("eval.batch_sampler", "shuffle_head", "partition", ("shuffle_head", "partition"),
               "ceil(N / 128) batches an epoch, each the first 128 of a fresh shuffle (pairs can "
               "repeat or be missed)", "each pair once an epoch"),
    Difference("eval.selection", "test", "val", ("test", "val"),
               "reports each student's best epoch on the TEST split",
               "the epoch is chosen on the validation split; the test split chooses nothing "
               "(test-selected numbers are marked †)"),
    Difference("eval.std", "population", "sample", ("population", "sample"),
               "np.std over the 5 students (n)", "the sample std (n - 1)"),
)


def resolve(cfg: "Config") -> "Config":
    """`cfg` with every null mode-dependent key filled from `cfg.fidelity`, in table order (a value
    computed from another key sees it resolved). The result is a new config (`cfg` is left as it
    is), so the sections' and the run's checks run again on the resolved values."""
    for difference in DIFFERENCES:
        section, name = difference.key.split(".")
        part = getattr(cfg, section)
        if getattr(part, name) is None:
            cfg = replace(cfg, **{section: replace(part, **{name: difference.value(cfg)})})
    return cfg


def difference_table() -> str:
    """The README's table of every setting the two modes resolve differently."""
    rows = ["| setting | the reference code | `reference` | `vldistill` | why vldistill differs |",
            "|---|---|---|---|---|"]
    rows += [f"| `{d.key}` | {d.reference_does} | {d.shown[0]} | {d.shown[1]} | {d.why} |"
             for d in DIFFERENCES]
    return "\n".join(rows)


__all__ = ["DIFFERENCES", "Difference", "difference_table", "resolve"]
