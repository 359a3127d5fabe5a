"""Structured run configuration: the schema, dataclasses grouped by stage.

A run is described by one YAML file plus `key=value` overrides (`distill.rank=20`), merged into
these dataclasses by `vldistill.configio`. Wrong types and impossible values are user errors:
they raise `ConfigError` with one line that says what to fix. A key left null (~) where its help
says "mode" takes the value of the run's `fidelity` (`vldistill.fidelity`: `reference`
reproduces the authors' scripts, `vldistill` is ours); the loaders resolve it, and the resolved
value is what config.yaml records. Names of registered things (datasets, towers, losses,
methods, ...) are checked by the loaders too, once the registries are filled: this module
imports nothing of the package but its errors, so reading a config never imports torch. So are
the `*_args` blocks: what a component's block may hold is its own options dataclass
(`vldistill.options`), not a field here.
"""
from __future__ import annotations

import copy
from dataclasses import Field, dataclass, field, fields, is_dataclass
from typing import Any, Optional

from .errors import UserError


class ConfigError(UserError, ValueError):
    """A configuration a user wrote is wrong; the message says how to fix it."""


def doc(default: Any, help: str) -> Any:
    """A field whose meaning is data (`metadata["help"]`), so `vldistill config`, docs/config.md
    and error messages read it instead of comments; a dataclass type or a list default is made
    fresh for every instance."""
    if isinstance(default, type):
        return field(default_factory=default, metadata={"help": help})
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


BATCHNORM_MODES = ("batch", "frozen")
INITS = ("real", "noise", "herding", "kcenter")
LR_POLICIES = ("fixed", "authors", "tuned")
FIDELITY_MODES = ("reference", "vldistill")
RANDAUGMENTS = ("lors", "repblend")
ACCEPTABLE_DATA_CHECKS = ("blank_captions", "duplicate_captions", "split_overlap")


@dataclass
class DataConfig:
    name: str = doc("shapes", "a registered dataset: shapes | shapes-specific | karpathy | coco | folder | "
                              "imagefolder (Hugging Face) | hf (a datasets folder) | openclip (its CSV) | "
                              "webdataset (tar shards)")
    dataset_args: dict[str, Any] = doc(dict, "options of registered datasets, by name "
                                             "(data.dataset_args.NAME.OPTION), each checked by its dataset; "
                                             "the built-in ones read the data.* keys below")
    image_root: Optional[str] = doc(None, "folder the image paths in the annotations are relative to; "
                                          "imagefolder: its folder; hf: the save_to_disk (or hub cache) "
                                          "folder; openclip: default the CSV's folder; webdataset: the "
                                          "shards' folder")
    ann_root: Optional[str] = doc(None, "folder holding train/val/test annotation files")
    train_json: Optional[str] = doc(None, "the train split's annotation file name (relative to ann_root, "
                                          "or absolute); openclip: its CSV (--train-data); webdataset: its "
                                          "shards, a name or brace pattern under image_root "
                                          "({00000..00099}.tar; null: every .tar not in val/test)")
    val_json: Optional[str] = doc(None, "the val split's annotation file (karpathy: required; coco: null "
                                        "reads train_json; folder, openclip, webdataset shards: give both "
                                        "val_json and test_json, or neither)")
    test_json: Optional[str] = doc(None, "the test split's annotation file (as val_json)")
    image_key: Optional[str] = doc(None, "the image column or key; null: the format's own -- folder: image, "
                                         "imagefolder: file_name, hf: image, openclip: filepath, "
                                         "webdataset: jpg;png;jpeg;webp (member extensions, the first "
                                         "present)")
    caption_key: Optional[str] = doc(None, "the caption column or key (a string or a list of captions); "
                                           "null: the format's own -- folder: caption, imagefolder: text, "
                                           "hf: caption, openclip: title, webdataset: txt (a member "
                                           "extension; without that member, the field of that name or "
                                           "else caption in the sample's .json)")
    csv_separator: Optional[str] = doc(None, "openclip: the CSV's column separator (its --csv-separator); "
                                             "null: a tab")
    image_size: int = doc(32, "square side the towers see")
    max_words: int = doc(30, "captions are truncated to this many words")
    max_words_eval: Optional[int] = doc(None, "val and test captions of files are truncated to this many "
                                              "words (null: data.max_words; RepBlend's COCO loader keeps 60 in "
                                              "train and 30 in val/test)")
    caption_cleaner: Optional[str] = doc(None, "mode: reference (keeps , and ?) | strict (drops them too)")
    no_aug: bool = doc(True, "turn off train-time augmentation of real images")
    randaugment: str = doc("lors", "train-time RandAugment operations: lors (BLIP's 10, as LoRS) | "
                                   "repblend (the same 9 without AutoContrast, as RepBlend)")
    accept: list[str] = doc([], "data checks passed on purpose, each recorded in results.json: "
                                "blank_captions (dropped) | duplicate_captions (a caption repeated "
                                "within an image, kept) | split_overlap (an image in two splits, by "
                                "path or by content, kept)")
    skip_bad_images: bool = doc(False, "skip (and count) unreadable images instead of failing")
    num_workers: int = doc(0, "DataLoader workers for real images")
    cache_images: Optional[bool] = doc(None, "mode: decode real images once into a uint8 tensor file "
                                             "(cache_dir); train crops then come from the resized image")
    cache_max_gb: float = doc(8.0, "with cache_images: only splits whose decoded pixels fit in this many "
                                   "GB are cached")
    train_ids: Any = doc(None, "coco (captions_*.json through pycocotools): image ids of the train split, "
                               "as a list or a file (one id per line, or a JSON list); null takes every "
                               "image of that split's file")
    val_ids: Any = doc(None, "coco: image ids of the val split (as train_ids)")
    test_ids: Any = doc(None, "coco: image ids of the test split (as train_ids)")
    val_fraction: float = doc(0.1, "folder, openclip, webdataset: with only train_json given (imagefolder, "
                                   "hf: without a val split), this fraction of its images is held out "
                                   "as val")
    test_fraction: float = doc(0.1, "as val_fraction, held out as test")
    split_seed: int = doc(0, "seed of that hold-out draw")
    shapes_train: int = doc(10_000, "shapes and shapes-specific (the embedded datasets: the same images, other "
                                         "captions): train images (5 captions each)")
    shapes_val: int = doc(500, "shapes: val images")
    shapes_test: int = doc(1_000, "shapes: test images")
    shapes_seed: int = doc(0, "shapes: the dataset is a pure function of this seed and the sizes")

    def __post_init__(self) -> None:
        _positive(self, "image_size", "max_words", "shapes_train", "shapes_val", "shapes_test")
        _choice(self, "caption_cleaner", ("reference", "strict"))
        _choice(self, "randaugment", RANDAUGMENTS)
        _positive(self, "max_words_eval")
        for check in self.accept:
            if check not in ACCEPTABLE_DATA_CHECKS:
                raise ConfigError(f"data.accept: unknown check {check!r}; one of "
                                  f"{', '.join(ACCEPTABLE_DATA_CHECKS)}")
        if self.num_workers < 0:
            raise ConfigError("data.num_workers must be >= 0")
        _non_negative(self, "cache_max_gb", "val_fraction", "test_fraction")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ConfigError("data.val_fraction + data.test_fraction must be < 1 (the rest is train)")
        if self.csv_separator is not None and len(self.csv_separator) != 1:
            raise ConfigError(f"data.csv_separator must be one character, not {self.csv_separator!r} (a tab: "
                              "leave it null)")


@dataclass
class ModelConfig:
    image_tower: str = doc("convnet", "a registered image tower: convnet | timm:NAME | open_clip:NAME")
    image_tower_args: dict[str, Any] = doc(dict, "options of image tower families, by registry name "
                                                 "(model.image_tower_args.convnet.width), each checked by its "
                                                 "tower; used by every tower of that family the run builds")
    pretrained_path: Optional[str] = doc(None, "local weights for the image tower, or imagenet: packaged "
                                               "weights (timm:efficientnet_lite0); nothing is downloaded")
    text_tower: str = doc("minilm", "a registered text tower: minilm | st:DIR | hf:DIR | "
                                    "open_clip:NAME@CKPT")
    text_tower_args: dict[str, Any] = doc(dict, "options of text tower families, by registry name "
                                                "(model.text_tower_args.PREFIX.OPTION), each checked by its tower")
    text_batch_size: int = doc(256, "captions per forward pass when filling the cache")
    head_dropout: Optional[float] = doc(None, "mode: dropout inside the projection heads (reference 0.1)")
    batchnorm: str = doc("batch", "batch: batch statistics in training | frozen: running statistics "
                                  "always")
    temperature: float = doc(0.07, "logits = cos / temperature (experts and evaluation)")
    frozen_backbone: bool = doc(False, "RepBlend: the image tower is frozen (eval mode, never trained) "
                                       "and a trainable image head follows it; only the two heads train")

    def __post_init__(self) -> None:
        _positive(self, "text_batch_size", "temperature")
        if self.head_dropout is not None and not 0.0 <= self.head_dropout < 1.0:
            raise ConfigError("model.head_dropout must be in [0, 1)")
        _choice(self, "batchnorm", BATCHNORM_MODES)


@dataclass
class BufferConfig:
    num_experts: int = doc(3, "experts trained, each from its own seed (distillation matches one per "
                              "iteration)")
    epochs: int = doc(3, "expert training epochs (one snapshot after each)")
    lr_teacher: float = doc(0.1, "expert SGD lr (image tower and text head)")
    momentum: float = doc(0.0, "expert SGD momentum")
    weight_decay: float = doc(0.0, "expert SGD weight decay")
    batch_size: int = doc(128, "expert mini-batch (pairs)")
    pairs_per_epoch: str = doc("captions", "captions: every caption once (reference) | images: every "
                                           "image once, with one of its captions drawn at random")
    drop_last: Optional[bool] = doc(None, "mode: drop an epoch's last, partial batch (reference: yes)")
    text_dropout: Optional[bool] = doc(None, "mode: experts run the text tower per batch in train mode "
                                             "(dropout-noised features, reference) instead of the cache")
    backbone_per_batch: Optional[bool] = doc(None, "mode: with model.frozen_backbone, experts (and "
                                                   "`full`) run it on every (augmented) batch (reference) "
                                                   "instead of cached features")
    store_all_epochs: bool = doc(False, "keep every epoch's snapshot (false: only the epochs distillation "
                                        "can use)")
    dir: Optional[str] = doc(None, "trajectory store; default RUN_DIR/buffer (share it across runs)")

    def __post_init__(self) -> None:
        _positive(self, "num_experts", "epochs", "batch_size")
        _non_negative(self, "lr_teacher", "momentum", "weight_decay")
        _choice(self, "pairs_per_epoch", ("captions", "images"))


@dataclass
class DistillConfig:
    n_pairs: int = doc(100, "N: synthetic image-text pairs in the distilled set")
    iterations: int = doc(300, "distillation iterations (one trajectory-matching update of the set each)")
    syn_steps: int = doc(8, "T: student steps on the synthetic set per iteration")
    expert_epochs: int = doc(1, "M: target snapshot is start + M")
    min_start_epoch: int = doc(0, "lowest expert epoch a matching segment starts from")
    max_start_epoch: int = doc(2, "start epoch drawn from [min_start_epoch, max_start_epoch)")
    expert_order: Optional[str] = doc(None, "mode: random (an expert drawn per iteration) | cycle (each "
                                            "expert once per shuffled pass, reference)")
    mini_batch: int = doc(20, "synthetic pairs per student step")
    batch_draw: str = doc("walk", "walk: consecutive chunks of a permutation (LoRS) | fresh: a new "
                                  "permutation's first mini_batch every step (VL-distill)")
    matching: str = doc("tesla", "a registered matching algorithm: tesla (constant memory, stop-gradient "
                                 "on the student) | unroll")
    matching_args: dict[str, Any] = doc(dict, "options of matching algorithms, by name "
                                              "(distill.matching_args.NAME.OPTION), each checked by its matcher")
    logit_scale: Optional[float] = doc(None, "inner-loop logit scale; null: 1 / model.temperature")
    blend_alpha: float = doc(0.0, "RepBlend: >0 blends representations in each student step, lam ~ "
                                  "Beta(alpha, alpha) (experts and evaluation never blend)")
    sim_kind: str = doc("lowrank", "a registered similarity: lowrank | full | identity")
    sim_args: dict[str, Any] = doc(dict, "options of similarities, by name (distill.sim_args.NAME.OPTION), "
                                         "each checked by its similarity (lowrank's are distill.rank and "
                                         "distill.alpha)")
    rank: int = doc(10, "r: rank of the lowrank similarity's L R^T term (LoRS)")
    alpha: float = doc(3.0, "the lowrank similarity's L R^T term is scaled by alpha / r")
    loss: str = doc("infonce", "a registered loss: infonce | ence | bce | wbce | kl | mse | cwcl")
    loss_eps: Optional[float] = doc(None, "mode: eps of log(p + eps) in WBCE (reference 1e-6; 0: exact)")
    init: str = doc("real", "real: random real pairs | noise (images and texts) | herding | kcenter: "
                            "the coreset of eval.coreset_space (distilling from the best selection "
                            "measures what distilling adds to it)")
    init_draw: Optional[str] = doc(None, "mode: images (distinct images, a caption each) | captions "
                                         "(distinct caption entries, images may repeat: reference)")
    init_augment: Optional[bool] = doc(None, "mode: start from an augmented view (reference: when "
                                             "augmenting)")
    init_view_cache: Optional[int] = doc(None, "mode: with init_augment, a pair whose image was among the "
                                               "last K distinct images drawn reuses that image's view "
                                               "(reference: its loader's lru_cache of 100; 0: a view per pair)")
    lr_teacher: float = doc(0.1, "initial value of the learnable student lrs")
    learn_lr: bool = doc(True, "learn the student lrs (image and text) with the set (false: they stay "
                               "lr_teacher)")
    lr_param: str = doc("linear", "linear | log (always positive)")
    lr_grad: Optional[str] = doc(None, "mode: exact (d of the matching loss) | branch (each lr from its "
                                       "own branch's ratio even with merge_branches: reference)")
    clamp_lr: Optional[bool] = doc(None, "mode: clamp linear lrs at min_lr (reference: never)")
    min_lr: float = doc(1e-4, "with clamp_lr: a linear learned lr is clamped at this")
    lr_img: float = doc(1000.0, "lr of the synthetic images")
    lr_txt: float = doc(1.0, "lr of the synthetic text embeddings")
    lr_lr: float = doc(1e-5, "lr of the learnable student lrs")
    lr_sim: float = doc(0.1, "lr of the similarity parameters")
    momentum_syn: float = doc(0.5, "SGD momentum of the synthetic images and text embeddings")
    momentum_lr: float = doc(0.5, "SGD momentum of the learnable student lrs")
    momentum_sim: float = doc(0.5, "SGD momentum of the similarity parameters")
    merge_branches: bool = doc(False, "one matching ratio over both branches")
    ema_decay: float = doc(0.0, ">0: keep an EMA of the set and export it")
    checkpoint_every: int = doc(100, "write a checkpoint every k iterations (also the window over which "
                                     "the best set so far is chosen)")
    eval_every: int = doc(0, ">0: probe the set at iteration 0 (its start) and every k iterations: one "
                             "student, eval_epochs epochs, scored on val (the distillation curve)")
    eval_epochs: int = doc(20, "epochs of that probe student (lr x0.1 at half)")
    max_bad_steps: Optional[int] = doc(None, "mode: consecutive non-finite iterations before the run "
                                             "stops")
    max_lr: Optional[float] = doc(None, "a learned-lr update above this is refused (null: only non-finite "
                                        "ones)")
    max_growth: float = doc(1000.0, "divergence guard: the run stops (the last good set saved) when the "
                                    "matching loss, or the RMS of the synthetic images or text embeddings, "
                                    "exceeds this many times its value at the start (0: no guard)")
    resume: bool = doc(False, "continue from this run's distill checkpoint and keep already distilled "
                              "sets (`vldistill run RUN_DIR` sets it); false starts over")

    def __post_init__(self) -> None:
        _positive(self, "n_pairs", "iterations", "syn_steps", "expert_epochs", "mini_batch",
                  "rank", "checkpoint_every", "max_bad_steps", "lr_teacher", "min_lr", "logit_scale", "eval_epochs")
        _non_negative(self, "lr_img", "lr_txt", "lr_lr", "lr_sim", "momentum_syn", "momentum_lr",
                      "momentum_sim", "min_start_epoch", "loss_eps", "eval_every", "blend_alpha",
                      "init_view_cache", "max_growth")
        _choice(self, "init", INITS)
        _choice(self, "init_draw", ("images", "captions"))
        _choice(self, "lr_param", ("linear", "log"))
        _choice(self, "lr_grad", ("exact", "branch"))
        _choice(self, "expert_order", ("random", "cycle"))
        _choice(self, "batch_draw", ("walk", "fresh"))
        if self.max_start_epoch <= self.min_start_epoch:
            raise ConfigError("distill.max_start_epoch must be > distill.min_start_epoch "
                              "(start epochs are drawn from [min, max))")
        if self.mini_batch > self.n_pairs:
            raise ConfigError(f"distill.mini_batch ({self.mini_batch}) must be <= distill.n_pairs "
                              f"({self.n_pairs})")
        if self.sim_kind == "lowrank" and self.rank > self.n_pairs:
            raise ConfigError(f"distill.rank ({self.rank}) must be <= distill.n_pairs ({self.n_pairs})")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError("distill.ema_decay must be in [0, 1)")
        if self.max_lr is not None and self.max_lr <= self.lr_teacher:
            raise ConfigError(f"distill.max_lr ({self.max_lr}) must be > distill.lr_teacher "
                              f"({self.lr_teacher}), the lrs' initial value (or null for no bound)")

    @property
    def last_epoch_used(self) -> int:
        """Latest expert snapshot that distillation can read."""
        return self.max_start_epoch - 1 + self.expert_epochs


@dataclass
class EvalTowerConfig:
    """One more image tower to evaluate every set on (cross-architecture transfer).

    Each tower needs its own recipe (a pretrained ResNet does not train with a ConvNet's lr);
    a field left null takes the value of the same `eval.*` key.
    """
    image_tower: Optional[str] = doc(None, "a registered image tower; null: this entry's key "
                                           "(eval.towers.KEY)")
    image_tower_args: dict[str, Any] = doc(dict, "this tower's options (as model.image_tower_args.FAMILY, "
                                                 "whose values it takes for the options it leaves out)")
    pretrained_path: Optional[str] = doc(None, "this tower's local weights or imagenet "
                                               "(model.pretrained_path is the distilled-on tower's)")
    lr: Optional[float] = doc(None, "student lr on a set (null: eval.lr)")
    full_lr: Optional[float] = doc(None, "lr of the `full` upper bound on this tower (null: eval.full_lr)")
    epochs: Optional[int] = doc(None, "student training epochs on a set (null: eval.epochs; the lr drop "
                                      "keeps its place in the schedule)")
    full_epochs: Optional[int] = doc(None, "epochs of the `full` upper bound on this tower (null: "
                                           "eval.full_epochs)")
    batch_size: Optional[int] = doc(None, "student mini-batch on a set (null: eval.batch_size)")
    augment: Optional[str] = doc(None, "augmentation of the set's images (null: eval.augment)")
    frozen_backbone: Optional[bool] = doc(None, "false: students fine-tune the whole tower, no image head "
                                                "(LoRS's protocol for a RepBlend set); null: "
                                                "model.frozen_backbone")
    methods: Optional[list[str]] = doc(None, "methods evaluated on this tower (null: eval.methods)")

    def __post_init__(self) -> None:
        for name in ("lr", "full_lr", "epochs", "full_epochs", "batch_size"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"eval.towers.*.{name} must be > 0 (or null to take eval.{name})")


SELECTIONS = ("val", "test", "final")


@dataclass
class EvalConfig:
    num_eval: int = doc(3, "seeds (fresh students) per method")
    epochs: Optional[int] = doc(None, "mode: training epochs on the set (reference 101, ours 100)")
    lr_drop_epoch: Optional[int] = doc(None, "mode: lr x0.1 after this many epochs (reference 51, ours "
                                             "epochs/2)")
    full_epochs: int = doc(3, "epochs for the `full` (all training data) upper bound")
    batch_size: int = doc(100, "mini-batch on the set (>= n_pairs: full batch)")
    batch_sampler: Optional[str] = doc(None, "mode: partition (each pair once an epoch) | shuffle_head "
                                             "(ceil(N/b) batches, each the first b of a fresh shuffle: "
                                             "reference)")
    lr_policy: Optional[str] = doc(None, "fixed: eval.lr (null: buffer.lr_teacher) for every set | authors: "
                                         "distilled sets with their learned lrs, real-pair sets with "
                                         "buffer.lr_teacher (the papers' protocol) | tuned: each set picks its "
                                         "lr on val from eval.lr_grid; null: fixed if eval.lr is given, else "
                                         "authors")
    lr: Optional[float] = doc(None, "the student lr of every set under lr_policy fixed")
    lr_grid: list[float] = doc([0.01, 0.03, 0.1, 0.3], "lr_policy tuned: the candidate lrs, the same for "
                                                       "every method (chosen on val, one student)")
    shared_lr: bool = doc(False, "the image lr for both towers (VL-distill's evaluation)")
    full_lr: Optional[float] = doc(None, "lr of the `full` upper bound; null: buffer.lr_teacher")
    momentum: float = doc(0.9, "student SGD momentum")
    weight_decay: float = doc(5e-4, "student SGD weight decay")
    augment: str = doc("none", "augmentation of the set's images in training: none | flip | flip_crop")
    val_every: int = doc(10, "score every k epochs (epoch selection)")
    first_scored_epoch: Optional[int] = doc(None, "mode: first epoch scored (reference 1: epochs 1, 11, "
                                                  "...; ours val_every)")
    selection: Optional[str] = doc(None, "mode: val | test (best on TEST, LoRS; labelled so) | final")
    std: Optional[str] = doc(None, "mode: sample (n - 1) | population (n, reference) std over seeds")
    methods: list[str] = doc(["lors", "lors-identity", "random", "full"], "registered methods to evaluate, each a row of results.json")
    method_args: dict[str, Any] = doc(dict, "options of methods, by name (eval.method_args.NAME.OPTION), each "
                                            "checked by its method")
    coreset_space: str = doc("image", "herding / kcenter features: image | text | joint")
    coreset_expert: Optional[int] = doc(None, "herding / kcenter: expert whose last stored snapshot embeds "
                                              "the data; null: the first")
    towers: dict[str, EvalTowerConfig] = doc(dict, "more image towers every set is evaluated on "
                                             "(cross-architecture), by results key")

    def __post_init__(self) -> None:
        _positive(self, "num_eval", "epochs", "full_epochs", "batch_size", "val_every",
                  "first_scored_epoch")
        _non_negative(self, "lr_drop_epoch")     # 0: the low lr from the start (epochs / 2 of 1)
        _choice(self, "selection", SELECTIONS)
        _choice(self, "lr_policy", LR_POLICIES)
        if self.lr_policy == "authors" and self.lr is not None:
            raise ConfigError("eval.lr_policy=authors trains each set with its own lrs: drop eval.lr "
                              "(or set eval.lr_policy=fixed)")
        if self.lr_policy == "tuned" and (not self.lr_grid or min(self.lr_grid) <= 0):
            raise ConfigError("eval.lr_grid must list positive lrs for eval.lr_policy=tuned")
        _choice(self, "std", ("sample", "population"))
        _choice(self, "batch_sampler", ("partition", "shuffle_head"))
        _choice(self, "coreset_space", ("image", "text", "joint"))
        if self.lr is not None and self.lr <= 0:
            raise ConfigError("eval.lr must be > 0 (or null to use the learned lrs)")
        if self.full_lr is not None and self.full_lr <= 0:
            raise ConfigError("eval.full_lr must be > 0 (or null to use buffer.lr_teacher)")


RANK_RULE = "distill.rank = min(distill.rank, n // 2); distill.mini_batch = min(distill.mini_batch, n)"


@dataclass
class SweepConfig:
    """`vldistill sweep`: every method of eval.methods at each budget, over one set of experts."""

    n_pairs: list[int] = doc([], "the budgets (pairs per set) `vldistill sweep` runs every method at")
    only: list[int] = doc([], "run these budgets only (a job array's share; a last `vldistill sweep` "
                              "without it gathers sweep.json)")

    def __post_init__(self) -> None:
        for key in ("n_pairs", "only"):
            if any(n <= 0 for n in getattr(self, key)):
                raise ConfigError(f"sweep.{key} must list positive pair counts")
        stray = sorted(set(self.only) - set(self.n_pairs))
        if stray:
            raise ConfigError(f"sweep.only lists {stray}, which are not in sweep.n_pairs")


@dataclass
class Config:
    run_dir: str = doc("runs/default", "where every stage of this run reads and writes")
    seed: int = doc(0, "every seed of the run (experts, distill, eval) derives from it")
    fidelity: str = doc("vldistill", "reference: the authors' scripts exactly | vldistill: ours (README)")
    device: str = doc("auto", "auto | cpu | cuda | cuda:N")
    threads: int = doc(0, "torch.set_num_threads; 0 leaves torch's default")
    amp: str = doc("none", "none | bf16: autocast for experts and evaluation (not distill)")
    deterministic: bool = doc(False, "deterministic GPU kernels (slower); CPU runs are deterministic "
                                     "anyway")
    cache_dir: Optional[str] = doc(None, "text-embedding cache; default ~/.cache/vldistill")
    data: DataConfig = doc(DataConfig, "the datasets: which one, where its files are, image size, caching")
    model: ModelConfig = doc(ModelConfig, "the student: image tower, frozen text tower, projection heads")
    buffer: BufferConfig = doc(BufferConfig, "the buffer stage: expert training and the trajectory store")
    distill: DistillConfig = doc(DistillConfig, "the distill stage: the synthetic set, trajectory "
                                                "matching, its optimizers")
    eval: EvalConfig = doc(EvalConfig, "the evaluation: students trained on each set, methods, extra "
                                       "towers")
    sweep: SweepConfig = doc(SweepConfig, "`vldistill sweep`: the budgets every method is evaluated at")

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0 (every stage's seeds are derived from it), got {self.seed}")
        _choice(self, "fidelity", FIDELITY_MODES)
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, not {self.device!r}")
        _choice(self, "amp", ("none", "bf16"))
        if self.threads < 0:
            raise ConfigError(f"threads must be >= 0 (0: torch's default), got {self.threads}")
        # mode keys are still null here until the loaders resolve them (fidelity.resolve builds
        # a new Config, so these checks run again on the resolved values)
        last = self.distill.last_epoch_used
        if last > self.buffer.epochs:
            raise ConfigError(
                f"distill.max_start_epoch - 1 + distill.expert_epochs = {last} exceeds "
                f"buffer.epochs = {self.buffer.epochs}: train experts longer or lower the start epoch")
        d = self.distill
        if d.learn_lr and d.lr_param == "linear" and d.clamp_lr and d.lr_teacher < d.min_lr:
            raise ConfigError(f"distill.lr_teacher ({d.lr_teacher}) is below distill.min_lr "
                              f"({d.min_lr}), where linear lrs are clamped: lower min_lr")


def _positive(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None and value <= 0:
            raise ConfigError(f"{_section(obj)}{name} must be > 0, got {value}")


def _non_negative(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None and value < 0:
            raise ConfigError(f"{_section(obj)}{name} must be >= 0, got {value}")


def _choice(obj: Any, name: str, options: tuple[str, ...]) -> None:
    value = getattr(obj, name)
    if value is not None and value not in options:
        raise ConfigError(f"{_section(obj)}{name} must be one of {', '.join(options)}; got {value!r}")


_SECTIONS = {"DataConfig": "data.", "ModelConfig": "model.", "BufferConfig": "buffer.",
             "DistillConfig": "distill.", "EvalConfig": "eval.", "EvalTowerConfig": "eval.towers.*.",
             "SweepConfig": "sweep."}


def _section(obj: Any) -> str:
    return _SECTIONS.get(type(obj).__name__, "")


def section_class(f: Field) -> type | None:
    """The dataclass a field holds (a section of `Config`, or each entry of `eval.towers`)."""
    if f.name == "towers":
        return EvalTowerConfig
    factory = f.default_factory
    return factory if isinstance(factory, type) and is_dataclass(factory) else None


def key_help(key: str) -> str:
    """The help of a dotted key (`distill.rank`, `eval.towers.NAME.lr`); "" if there is none."""
    cls: type | None = Config
    parts = key.split(".")
    while cls is not None and parts:
        found = {f.name: f for f in fields(cls)}.get(parts.pop(0))
        if found is None:
            return ""
        if not parts:
            return found.metadata.get("help", "")
        cls = section_class(found)
        if cls is EvalTowerConfig:
            parts = parts[1:]           # eval.towers.NAME.field: NAME is the entry's own key
    return ""


__all__ = ["ACCEPTABLE_DATA_CHECKS", "BATCHNORM_MODES", "RANDAUGMENTS", "Config", "ConfigError", "DataConfig", "DistillConfig", "EvalConfig",
           "EvalTowerConfig", "FIDELITY_MODES", "INITS", "LR_POLICIES", "RANK_RULE", "SweepConfig",
           "ModelConfig", "BufferConfig", "SELECTIONS", "doc", "key_help", "section_class"]
