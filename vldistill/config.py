"""Structured run configuration: the schema, dataclasses grouped by stage.

A run is described by one YAML file plus `key=value` overrides (`distill.rank=20`), merged into
these dataclasses by `vldistill.configio`. Wrong types and impossible values are user errors:
they raise `ConfigError` with one line that says what to fix. A key left null (~) where its help
says "mode" takes the value of the run's `fidelity` (`vldistill.fidelity`: `reference`
reproduces the authors' scripts, `vldistill` is ours); the loaders resolve it, and the resolved
value is what config.yaml records. Names of registered things (datasets, towers, losses,
methods, ...) are checked by the loaders too, once the registries are filled: this module
imports nothing of the package but its errors, so reading a config never imports torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from .errors import UserError


class ConfigError(UserError, ValueError):
    """A configuration a user wrote is wrong; the message says how to fix it."""


BATCHNORM_MODES = ("batch", "frozen")
FIDELITY_MODES = ("reference", "vldistill")


@dataclass
class DataConfig:
    name: str = "shapes"                  # a registered dataset: shapes | karpathy | coco | folder
    image_root: Optional[str] = None      # folder the image paths in the annotations are relative to
    ann_root: Optional[str] = None        # folder holding train/val/test annotation files
    train_json: Optional[str] = None      # annotation file names (relative to ann_root, or absolute)
    val_json: Optional[str] = None
    test_json: Optional[str] = None
    image_size: int = 32                  # square side the towers see
    max_words: int = 30                   # captions are truncated to this many words
    caption_cleaner: Optional[str] = None # mode: reference (keeps , and ?) | strict (drops them too)
    no_aug: bool = True                   # turn off train-time augmentation of real images
    skip_bad_images: bool = False         # skip (and count) unreadable images instead of failing
    num_workers: int = 0                  # DataLoader workers for real images
    cache_images: Optional[bool] = None   # mode: decode real images once into a uint8 tensor file
                                          # (cache_dir); train crops then come from the resized image
    cache_max_gb: float = 8.0             # ... for splits whose decoded pixels fit in this many GB
    # coco (captions_*.json through pycocotools): image ids of each split, as a list or a file
    # (one id per line, or a JSON list); null takes every image of that split's file
    train_ids: Any = None
    val_ids: Any = None
    test_ids: Any = None
    # folder: with only train_json given, these fractions of its images are held out as val/test
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 0                   # seed of that hold-out draw
    # the embedded "shapes" dataset
    shapes_train: int = 10_000            # train images (5 captions each)
    shapes_val: int = 500
    shapes_test: int = 1_000
    shapes_seed: int = 0                  # the dataset is a pure function of this seed and sizes

    def __post_init__(self) -> None:
        _positive(self, "image_size", "max_words", "shapes_train", "shapes_val", "shapes_test")
        _choice(self, "caption_cleaner", ("reference", "strict"))
        if self.num_workers < 0:
            raise ConfigError("data.num_workers must be >= 0")
        _non_negative(self, "cache_max_gb", "val_fraction", "test_fraction")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ConfigError("data.val_fraction + data.test_fraction must be < 1 (the rest is train)")


@dataclass
class ModelConfig:
    image_tower: str = "convnet"          # a registered image tower: convnet | timm:NAME | open_clip:NAME
    pretrained_path: Optional[str] = None # local weights for the image tower, or imagenet: packaged weights (timm:efficientnet_lite0); nothing is downloaded
    convnet_width: int = 64
    convnet_depth: int = 3
    text_tower: str = "minilm"            # a registered text tower: minilm | st:DIR | hf:DIR | open_clip:NAME@CKPT
    text_batch_size: int = 256            # captions per forward pass when filling the cache
    head_dropout: Optional[float] = None  # mode: dropout inside the projection heads (reference 0.1)
    batchnorm: str = "batch"              # batch: batch statistics in training | frozen: running statistics always
    temperature: float = 0.07             # logits = cos / temperature (experts and evaluation)
    frozen_backbone: bool = False         # RepBlend: the image tower is frozen (eval mode, never trained) and
                                          # a trainable image head follows it; only the two heads train

    def __post_init__(self) -> None:
        _positive(self, "convnet_width", "convnet_depth", "text_batch_size", "temperature")
        if self.head_dropout is not None and not 0.0 <= self.head_dropout < 1.0:
            raise ConfigError("model.head_dropout must be in [0, 1)")
        _choice(self, "batchnorm", BATCHNORM_MODES)


@dataclass
class BufferConfig:
    num_experts: int = 3
    epochs: int = 3                       # expert training epochs (one snapshot after each)
    lr_teacher: float = 0.1               # expert SGD lr (image tower and text head)
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch_size: int = 128
    pairs_per_epoch: str = "captions"     # captions: every caption once (reference) | images: every
                                          # image once, with one of its captions drawn at random
    drop_last: Optional[bool] = None      # mode: drop an epoch's last, partial batch (reference: yes)
    text_dropout: Optional[bool] = None   # mode: experts run the text tower per batch in train mode
                                          # (dropout-noised features, reference) instead of the cache
    backbone_per_batch: Optional[bool] = None  # mode: with model.frozen_backbone, experts (and `full`) run
                                          # it on every (augmented) batch (reference) instead of cached features
    store_all_epochs: bool = False        # False: keep only epochs distillation can use
    dir: Optional[str] = None             # trajectory store; default RUN_DIR/buffer (share it across runs)

    def __post_init__(self) -> None:
        _positive(self, "num_experts", "epochs", "batch_size")
        _non_negative(self, "lr_teacher", "momentum", "weight_decay")
        _choice(self, "pairs_per_epoch", ("captions", "images"))


@dataclass
class DistillConfig:
    n_pairs: int = 100
    iterations: int = 300
    syn_steps: int = 8                    # T: student steps on the synthetic set per iteration
    expert_epochs: int = 1                # M: target snapshot is start + M
    min_start_epoch: int = 0
    max_start_epoch: int = 2              # start epoch drawn from [min_start_epoch, max_start_epoch)
    expert_order: Optional[str] = None    # mode: random (an expert drawn per iteration) | cycle (each
                                          # expert once per shuffled pass, reference)
    mini_batch: int = 20                  # synthetic pairs per student step
    batch_draw: str = "walk"              # walk: consecutive chunks of a permutation (LoRS) | fresh: a
                                          # new permutation's first mini_batch every step (VL-distill)
    matching: str = "tesla"               # tesla (constant memory, stop-gradient on the student) | unroll
    logit_scale: Optional[float] = None   # inner-loop logit scale; null: 1 / model.temperature
    blend_alpha: float = 0.0              # RepBlend: >0 blends representations in each student step,
                                          # lam ~ Beta(alpha, alpha) (experts and evaluation never blend)
    sim_kind: str = "lowrank"             # a registered similarity: lowrank | full | identity
    rank: int = 10
    alpha: float = 3.0
    loss: str = "infonce"                 # a registered loss: infonce | ence | bce | wbce | kl | mse | cwcl
    loss_eps: Optional[float] = None      # mode: eps of log(p + eps) in WBCE (reference 1e-6; 0: exact)
    init: str = "real"                    # real | noise (images and texts)
    init_draw: Optional[str] = None       # mode: images (distinct images, a caption each) | captions
                                          # (distinct caption entries, images may repeat: reference)
    init_augment: Optional[bool] = None   # mode: start from an augmented view (reference: when augmenting)
    lr_teacher: float = 0.1               # initial value of the learnable student lrs
    learn_lr: bool = True
    lr_param: str = "linear"              # linear | log (always positive)
    lr_grad: Optional[str] = None         # mode: exact (d of the matching loss) | branch (each lr from its
                                          # own branch's ratio even with merge_branches: reference)
    clamp_lr: Optional[bool] = None       # mode: clamp linear lrs at min_lr (reference: never)
    min_lr: float = 1e-4
    lr_img: float = 1000.0                # lr of the synthetic images
    lr_txt: float = 1.0                   # lr of the synthetic text embeddings
    lr_lr: float = 1e-5                   # lr of the learnable student lrs
    lr_sim: float = 0.1                   # lr of the similarity parameters
    momentum_syn: float = 0.5
    momentum_lr: float = 0.5
    momentum_sim: float = 0.5
    merge_branches: bool = False          # one matching ratio over both branches
    ema_decay: float = 0.0                # >0: keep an EMA of the set and export it
    checkpoint_every: int = 100
    eval_every: int = 0                   # >0: evaluate the set every k iterations (and at 0), logged
    max_bad_steps: Optional[int] = None   # mode: consecutive non-finite iterations before the run stops
    max_lr: Optional[float] = None        # a learned-lr update above this is refused (null: only non-finite ones)
    resume: bool = False

    def __post_init__(self) -> None:
        _positive(self, "n_pairs", "iterations", "syn_steps", "expert_epochs", "mini_batch",
                  "rank", "checkpoint_every", "max_bad_steps", "lr_teacher", "min_lr", "logit_scale")
        _non_negative(self, "lr_img", "lr_txt", "lr_lr", "lr_sim", "momentum_syn", "momentum_lr",
                      "momentum_sim", "min_start_epoch", "loss_eps", "eval_every", "blend_alpha")
        _choice(self, "init", ("real", "noise"))
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
    image_tower: Optional[str] = None     # registry name; null: this entry's key (eval.towers.KEY)
    pretrained_path: Optional[str] = None # this tower's local weights or imagenet (model.pretrained_path is the distilled-on tower's)
    lr: Optional[float] = None            # student lr on a set
    full_lr: Optional[float] = None       # lr of the `full` upper bound on this tower
    epochs: Optional[int] = None
    full_epochs: Optional[int] = None
    batch_size: Optional[int] = None
    augment: Optional[str] = None
    frozen_backbone: Optional[bool] = None  # false: students fine-tune the whole tower, no image head (LoRS's
                                          # protocol for a RepBlend set); null: model.frozen_backbone
    methods: Optional[list[str]] = None   # null: eval.methods

    def __post_init__(self) -> None:
        for name in ("lr", "full_lr", "epochs", "full_epochs", "batch_size"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"eval.towers.*.{name} must be > 0 (or null to take eval.{name})")


SELECTIONS = ("val", "test", "final")


@dataclass
class EvalConfig:
    num_eval: int = 3                     # seeds (fresh students) per method
    epochs: Optional[int] = None          # mode: training epochs on the set (reference 101, ours 100)
    lr_drop_epoch: Optional[int] = None   # mode: lr x0.1 after this many epochs (reference 51, ours epochs/2)
    full_epochs: int = 3                  # epochs for the `full` (all training data) upper bound
    batch_size: int = 100                 # mini-batch on the set (>= n_pairs: full batch)
    batch_sampler: Optional[str] = None   # mode: partition (each pair once an epoch) | shuffle_head
                                          # (ceil(N/b) batches, each the first b of a fresh shuffle: reference)
    lr: Optional[float] = None            # None: the set's learned lrs (buffer.lr_teacher for coresets)
    shared_lr: bool = False               # the image lr for both towers (VL-distill's evaluation)
    full_lr: Optional[float] = None       # lr of the `full` upper bound; None: buffer.lr_teacher
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: str = "none"                 # augmentation of the set's images in training: none | flip | flip_crop
    val_every: int = 10                   # score every k epochs (epoch selection)
    first_scored_epoch: Optional[int] = None  # mode: first epoch scored (reference 1: epochs 1, 11, ...; ours val_every)
    selection: Optional[str] = None       # mode: val | test (best on TEST, LoRS; labelled so) | final
    std: Optional[str] = None             # mode: sample (n - 1) | population (n, reference) std over seeds
    methods: list[str] = field(default_factory=lambda: ["lors", "lors-identity", "random", "full"])  # registered methods
    coreset_space: str = "image"          # herding / kcenter features: image | text | joint
    coreset_expert: Optional[int] = None  # expert whose last stored snapshot embeds the data; None: the first
    towers: dict[str, EvalTowerConfig] = field(default_factory=dict)  # more towers (cross-architecture)

    def __post_init__(self) -> None:
        _positive(self, "num_eval", "epochs", "lr_drop_epoch", "full_epochs", "batch_size",
                  "val_every", "first_scored_epoch")
        _choice(self, "selection", SELECTIONS)
        _choice(self, "std", ("sample", "population"))
        _choice(self, "batch_sampler", ("partition", "shuffle_head"))
        _choice(self, "coreset_space", ("image", "text", "joint"))
        if self.lr is not None and self.lr <= 0:
            raise ConfigError("eval.lr must be > 0 (or null to use the learned lrs)")
        if self.full_lr is not None and self.full_lr <= 0:
            raise ConfigError("eval.full_lr must be > 0 (or null to use buffer.lr_teacher)")


@dataclass
class Config:
    run_dir: str = "runs/default"         # where every stage of this run reads and writes
    seed: int = 0                         # every seed of the run (experts, distill, eval) derives from it
    fidelity: str = "vldistill"           # reference: the authors' scripts exactly | vldistill: ours (README)
    device: str = "auto"                  # auto | cpu | cuda | cuda:N
    threads: int = 0                      # torch.set_num_threads; 0 leaves torch's default
    amp: str = "none"                     # none | bf16: autocast for experts and evaluation (not distill)
    deterministic: bool = False           # deterministic GPU kernels (slower); CPU runs are deterministic anyway
    cache_dir: Optional[str] = None       # text-embedding cache; default ~/.cache/vldistill
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    buffer: BufferConfig = field(default_factory=BufferConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

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
             "DistillConfig": "distill.", "EvalConfig": "eval.", "EvalTowerConfig": "eval.towers.*."}


def _section(obj: Any) -> str:
    return _SECTIONS.get(type(obj).__name__, "")


__all__ = ["BATCHNORM_MODES", "Config", "ConfigError", "DataConfig", "DistillConfig", "EvalConfig",
           "EvalTowerConfig", "FIDELITY_MODES", "ModelConfig", "BufferConfig", "SELECTIONS"]
