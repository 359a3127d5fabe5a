"""RepBlend: the frozen-backbone student (heads only, the backbone never changed), the blend of
representations written out, the real-image feature cache against a fresh forward pass, the
two methods' settings and stores, reproducible sets, and the paper configs' hyperparameters.
(TESLA's gradient with blending against autograd through the unroll: tests/test_matching.py.)"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vldistill.buffer import experts
from vldistill.algorithms import repblend
from vldistill.cli import main
from vldistill.configio import load_config
from vldistill.data import prepare_data
from vldistill.evaluation.methods import method_config
from vldistill.models.student import Blend, FunctionalStudent, build_student
from vldistill.runtime.seeds import seeded
from vldistill.buffer.store import TrajectoryStore
from vldistill.algorithms.training import sgd_for_student

from reliability_helpers import FAST, TINY

CPU = torch.device("cpu")
EFFNET = ["data.image_size=32", "model.image_tower=timm:efficientnet_lite0", "model.pretrained_path=imagenet",
          "model.batchnorm=frozen", "model.frozen_backbone=true"]


@pytest.fixture(scope="module")
def effnet(cache_dir):
    """The tiny config over a frozen ImageNet EfficientNet-Lite0 at 32 px, and its data."""
    cfg = load_config(TINY, [f"cache_dir={cache_dir}", *EFFNET, *FAST])
    return cfg, prepare_data(cfg)


# ------------------------------------------------------------------ the student
def test_blend_is_the_written_formula():
    """Both modalities' representations, after the backbone and before the heads, mixed with one
    lam and one permutation: logits = s norm(h(lam f + (1-lam) f[pi])) norm(g(lam e + (1-lam) e[pi]))^T."""
    cfg = load_config(None, ["data.image_size=16", "model.convnet_width=4", "model.convnet_depth=2",
                             "model.frozen_backbone=true", "model.head_dropout=0"])
    model = build_student(cfg.model, 16, 6, seed=0).double()
    x, e = torch.randn(5, 3, 16, 16, dtype=torch.float64), torch.randn(5, 6, dtype=torch.float64)
    lam, perm = 0.3, torch.tensor([2, 0, 4, 1, 3])
    f = model.image_tower(x)
    image = F.normalize(model.image_head(lam * f + (1 - lam) * f[perm]), dim=-1)
    text = F.normalize(model.text_head(lam * e + (1 - lam) * e[perm]), dim=-1)
    torch.testing.assert_close(model(x, e, blend=Blend(lam, perm)), model.logit_scale * image @ text.t())
    torch.testing.assert_close(model(x, e), model.logit_scale * F.normalize(model.image_head(f), dim=-1)
                               @ F.normalize(model.text_head(e), dim=-1).t())


def test_blend_draws_follow_the_step_seed():
    def draw(seed: int, alpha: float = 1.0) -> Blend:
        with seeded(seed):
            return Blend.draw(alpha, 20)
    first, again, other = draw(3), draw(3), draw(4)
    assert first.lam == again.lam and torch.equal(first.perm, again.perm)
    assert first.lam != other.lam and not torch.equal(first.perm, other.perm)
    assert torch.equal(first.perm.sort().values, torch.arange(20))
    lams = torch.tensor([draw(s).lam for s in range(400)])          # Beta(1, 1) = U(0, 1)
    assert 0 <= float(lams.min()) and float(lams.max()) <= 1 and abs(float((lams < 0.25).float().mean()) - 0.25) < 0.07
    peaked = torch.tensor([draw(s, 20.0).lam for s in range(400)])  # Beta(20, 20): near 1/2
    assert float((peaked - 0.5).abs().max()) < 0.3 and float((lams - 0.5).abs().max()) > 0.4


def test_frozen_backbone_student_trains_only_its_heads(effnet):
    cfg, data = effnet
    model = build_student(cfg.model, 32, data.text_dim, seed=1)
    names = [n for n, _ in model.named_parameters()]
    assert names and all(n.startswith(("image_head.", "text_head.")) for n in names)
    assert all(not t.requires_grad for t in model.image_tower.state_dict().values())
    fs = FunctionalStudent(model)
    assert fs.image_layout.names == [n for n in names if n.startswith("image_head.")]
    assert fs.image_layout.numel == 2 * (1280 * 1280 + 1280) + 2 * 1280       # a 1280 -> 1280 head
    optimized = {id(p) for g in sgd_for_student(model, 0.1, 0.1, 0.9, 5e-4).param_groups for p in g["params"]}
    assert optimized == {id(p) for p in model.parameters()}
    model.train()
    assert not any(m.training for m in model.image_tower.modules()) and model.image_head.training
    # the same backbone whatever the student's seed; its features go straight to the head
    other = build_student(cfg.model, 32, data.text_dim, seed=2)
    assert all(torch.equal(a, b) for a, b in zip(model.image_tower.state_dict().values(),
                                                 other.image_tower.state_dict().values()))
    x = data.dataset.val.images.get_batch(torch.arange(4))
    model.eval()
    torch.testing.assert_close(model.encode_image(x), model.encode_image(model.image_tower(x)))


def test_experts_leave_the_backbone_bit_identical_and_store_heads_only(effnet, tmp_path, monkeypatch):
    cfg, data = effnet
    built = []

    def capture(*args, **kwargs):
        built.append(build_student(*args, **kwargs))
        return built[-1]
    monkeypatch.setattr(experts, "build_student", capture)
    per_batch = load_config(TINY, [f"cache_dir={cfg.cache_dir}", *EFFNET, *FAST, "buffer.backbone_per_batch=true"])
    store = experts.run_buffer(per_batch, data, CPU, TrajectoryStore(tmp_path / "store"))
    trained = built[-1]                                  # the expert (the first build is the manifest's)
    fresh = build_student(per_batch.model, 32, data.text_dim, seed=0)
    for (name, a), b in zip(trained.image_tower.state_dict().items(), fresh.image_tower.state_dict().values()):
        assert torch.equal(a, b), name
    manifest = store.manifest()
    assert manifest["frozen_backbone"] and all(n.startswith("image_head.") for n, _ in manifest["image_params"])
    start, end = store.load(0, 0), store.load(0, 1)
    assert start.image.numel() == FunctionalStudent(fresh).image_layout.numel
    assert not torch.equal(start.image, end.image) and not torch.equal(start.text, end.text)


# ------------------------------------------------------------------ the feature cache
def test_cached_features_equal_a_fresh_forward_pass_and_are_computed_once(effnet, monkeypatch):
    cfg, data = effnet
    model = build_student(cfg.model, 32, data.text_dim, seed=0).eval()
    cached = repblend.with_cached_features(model, data, cfg, CPU, ("train", "val", "test"))
    assert cached.dataset.fingerprint == data.dataset.fingerprint
    with torch.no_grad():
        for name in ("train", "val", "test"):
            split = data.split(name)
            fresh = model.image_tower(split.images.get_batch(torch.arange(split.n_images)))
            got = cached.split(name).images.get_batch(torch.arange(split.n_images))
            assert got.shape == (split.n_images, 1280)
            torch.testing.assert_close(got, fresh, rtol=1e-5, atol=1e-5)
    assert len(list((Path(cfg.cache_dir) / "features").glob("*.safetensors"))) >= 3

    def no_backbone(*args, **kwargs):
        raise AssertionError("the backbone ran although its features are cached")
    monkeypatch.setattr(repblend, "backbone_features", no_backbone)
    repblend._read.cache_clear()
    again = repblend.with_cached_features(model, data, cfg, CPU, ("val",))
    assert torch.equal(again.split("val").images.features, cached.split("val").images.features)
    random_backbone = build_student(load_config(TINY, [*EFFNET, "model.pretrained_path=null"]).model, 32,
                                    data.text_dim, seed=0)
    with pytest.raises(AssertionError, match="backbone ran"):      # other weights: other features
        repblend.with_cached_features(random_backbone, data, cfg, CPU, ("val",))
    lors = build_student(load_config(TINY).model, 16, data.text_dim, seed=0)
    assert repblend.with_cached_features(lors, data, cfg, CPU, ("val",)) is data


# ------------------------------------------------------------------ the methods
def test_repblend_methods_state_their_settings(tiny_cfg):
    lors = tiny_cfg()
    rb, plain = method_config(lors, "repblend"), method_config(lors, "repblend-noblend")
    assert (rb.model.frozen_backbone, rb.distill.blend_alpha) == (True, 1.0)
    assert (plain.model.frozen_backbone, plain.distill.blend_alpha) == (True, 0.0)
    assert rb.buffer.dir == plain.buffer.dir == f"{lors.run_dir}/buffer-heads"       # head-only experts
    assert rb.eval.val_every == lors.eval.val_every                                    # vldistill mode
    reference = method_config(tiny_cfg("fidelity=reference", "buffer.dir=/stores/x"), "repblend")
    assert reference.buffer.dir == "/stores/x-heads" and reference.eval.val_every == 20
    frozen = tiny_cfg("model.frozen_backbone=true", "distill.blend_alpha=0.5", "buffer.dir=/stores/h")
    assert method_config(frozen, "repblend").buffer.dir == "/stores/h"                 # already head-only
    assert method_config(frozen, "repblend").distill.blend_alpha == 0.5


def test_same_seed_same_set_and_blending_changes_it(tmp_path, cache_dir, tiny_data):
    """lam and pi come from the distill generator's per-step seeds: two distillations with one
    seed give the same set, bit for bit; without blending the set differs."""
    frozen = ["model.frozen_backbone=true", *FAST, f"cache_dir={cache_dir}", "distill.iterations=2"]
    store = tmp_path / "store"
    experts.run_buffer(load_config(TINY, frozen), tiny_data, CPU, TrajectoryStore(store))
    for run, methods in (("a", "repblend,repblend-noblend"), ("b", "repblend")):
        assert main(["distill", str(TINY), f"run_dir={tmp_path / run}", f"buffer.dir={store}", *frozen,
                     f"eval.methods=[{methods}]"]) == 0
    blended, again, plain = (tmp_path / run / m / "set.safetensors" for run, m in
                             (("a", "repblend"), ("b", "repblend"), ("a", "repblend-noblend")))
    assert blended.read_bytes() == again.read_bytes()
    assert blended.read_bytes() != plain.read_bytes()


def test_a_lors_run_trains_both_stores_and_evaluates_repblend_both_ways(tmp_path, cache_dir):
    """eval.methods with lors and repblend: the buffer stage trains the tower experts and the
    head-only experts (RUN_DIR/buffer-heads); an eval tower with frozen_backbone false evaluates
    the repblend set under LoRS's protocol (the tower fine-tuned, no image head)."""
    run_dir = tmp_path / "run"
    assert main(["run", str(TINY), f"run_dir={run_dir}", f"cache_dir={cache_dir}", *FAST,
                 "eval.methods=[lors,repblend,random]", "eval.towers.finetune.image_tower=convnet",
                 "eval.towers.finetune.frozen_backbone=false", "eval.towers.finetune.methods=[repblend]"]) == 0
    tower_store, heads_store = TrajectoryStore(run_dir / "buffer"), TrajectoryStore(run_dir / "buffer-heads")
    assert not tower_store.manifest()["frozen_backbone"] and heads_store.manifest()["frozen_backbone"]
    assert tower_store.experts() == heads_store.experts() == [0]
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results["methods"]) == {"lors", "repblend", "random"}
    finetune = results["towers"]["finetune"]
    assert finetune["settings"]["frozen_backbone"] is False and set(finetune["methods"]) == {"repblend"}
    card = json.loads((run_dir / "repblend" / "set.json").read_text())
    assert card["config"]["model"]["frozen_backbone"] and card["config"]["distill"]["blend_alpha"] == 1.0


# ------------------------------------------------------------------ the paper configs
# (n_pairs, max_start_epoch, lr_img = lr_txt, lr_sim, rank, alpha, merge_branches, inner logit scale,
#  eval_it) as in the reference's scripts/distill_{flickr,coco}_repblend.sh (zhangxin-xd/RepBlend)
REFERENCE = {
    "flickr30k_repblend_100": (99, 2, 100, 10, 10, 3, False, None, 150),
    "flickr30k_repblend_200": (199, 2, 1000, 10, 5, 1, False, None, 150),
    "flickr30k_repblend_500": (499, 3, 1000, 100, 20, 0.01, False, None, 300),
    "coco_repblend_100": (99, 2, 1000, 5, 10, 1, True, None, 150),
    "coco_repblend_200": (199, 2, 1000, 50, 20, 1, True, None, 150),
    "coco_repblend_500": (499, 2, 5000, 500, 40, 1, True, 10.0, 150),
}


@pytest.mark.parametrize("config", sorted(REFERENCE))
def test_repblend_paper_configs_carry_the_reference_hyperparameters(config):
    run = load_config(f"configs/{config}.yaml")
    cfg = method_config(run, "repblend")
    d, m, e = cfg.distill, cfg.model, cfg.eval
    assert (d.n_pairs, d.max_start_epoch, d.lr_img, d.lr_sim, d.rank, d.alpha, d.merge_branches,
            d.logit_scale, d.eval_every) == REFERENCE[config]
    assert (d.lr_txt, d.lr_lr, d.lr_teacher, d.syn_steps, d.expert_epochs, d.mini_batch, d.iterations) == (
        d.lr_img, 0.01, 0.1, 8, 1, 20, 3000)
    assert (d.loss, d.sim_kind, d.lr_grad, d.matching) == ("wbce", "lowrank", "branch", "tesla")
    assert (m.image_tower, cfg.data.image_size, m.temperature, m.head_dropout) == ("timm:nfnet_l0", 224, 0.07, 0.1)
    assert m.frozen_backbone and d.blend_alpha == 1.0 and cfg.fidelity == "reference" and not cfg.data.no_aug
    assert d.init_augment is (config != "coco_repblend_500")         # --no_aug: the init only
    assert (e.epochs, e.lr_drop_epoch, e.first_scored_epoch, e.val_every, e.selection, e.batch_size,
            e.batch_sampler, e.num_eval) == (101, 51, 1, 20, "test", 128, "shuffle_head", 1)
    buffer = load_config(f"configs/buffer_{config.split('_')[0]}_repblend.yaml")
    b = buffer.buffer
    assert (b.num_experts, b.epochs, b.lr_teacher, b.momentum, b.weight_decay, b.batch_size) == (20, 10, 0.1, 0, 0, 128)
    assert buffer.fidelity == "reference" and b.text_dropout and b.drop_last and b.backbone_per_batch
    assert run.buffer.dir == b.dir and run.model == buffer.model                         # one store
    assert buffer.model.text_tower == "hf:checkpoints/bert-base-uncased" and buffer.model.frozen_backbone
