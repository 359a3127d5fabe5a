"""Tiny, randomly initialized text towers written to a folder on request.

A text tower family whose models live in folders registers one of these as its `example`
(`TEXT_TOWERS.register(..., example=fn)`, `fn(folder) -> spec`), so the registry-driven tests
build every registered family the same way, without downloading anything.
"""
from __future__ import annotations

import json
import re
import string
from pathlib import Path

import torch

from ..runtime.seeds import seeded

# single characters and their word-piece continuations: any lower-case word has tokens
_CHARACTERS = [*string.ascii_lowercase, *string.digits]


def tiny_bert(folder: Path, captions: list[str] = (), kind: str = "bert") -> Path:
    """A randomly initialized BERT (or DistilBERT) whose vocabulary holds the words of
    `captions` and every single letter and digit (so no word is unknown), saved with
    save_pretrained() as a real checkpoint folder would be."""
    from transformers import (BertConfig, BertModel, BertTokenizerFast, DistilBertConfig,
                              DistilBertModel)
    words = sorted({w for c in captions for w in re.findall(r"[a-z0-9]+", c.lower())} - set(_CHARACTERS))
    words += _CHARACTERS + [f"##{c}" for c in _CHARACTERS]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]))
    tokenizer = BertTokenizerFast(str(folder / "vocab.txt"))   # positional: vocab_file (v4), vocab (v5)
    if tokenizer.unk_token_id in tokenizer("zebra " + words[0])["input_ids"]:
        raise AssertionError("the tiny BERT's tokenizer ignored its vocabulary (a transformers API change?)")
    size = dict(vocab_size=len(words) + 5, max_position_embeddings=64)
    if kind == "bert":
        model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, **size))
    else:
        model = DistilBertModel(DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64, **size))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_open_clip(folder: Path):
    """An open_clip local-dir folder (open_clip_config.json + weights) of a tiny CLIP; returns
    the folder and the model written there."""
    import open_clip
    model_cfg = {"embed_dim": 16,
                 "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                                "patch_size": 16},
                 "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                              "layers": 1}}
    folder.mkdir(parents=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg,
                                                              "preprocess_cfg": {}}))
    with seeded(1):
        model = open_clip.CLIP(**model_cfg)
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder, model


def hf_example(folder: Path) -> str:
    return f"hf:{tiny_bert(folder / 'bert')}"


def open_clip_example(folder: Path) -> str:
    return f"open_clip:local-dir:{tiny_open_clip(folder / 'clip')[0]}"


__all__ = ["hf_example", "open_clip_example", "tiny_bert", "tiny_open_clip"]
