"""Every seed of a run, derived from the one run seed by one scheme.

`derive_seed(seed, stream, *keys)` feeds numpy's `SeedSequence` with the run seed as entropy
and (stream id, *keys) as its spawn key, and takes 63 bits of its output. Different streams
or keys give statistically independent seeds, with none of the collisions of arithmetic
schemes (with `seed * 100 + epoch`, expert k's epoch 101 shuffled like expert k+1's epoch 1).

The streams of a run (keys in brackets):

    expert-init [k]            expert k's initial weights
    expert-epoch [k, e]        the order (and caption draw) of expert k's epoch e
    distill                    one distillation: expert and start-epoch draws, mini-batches,
                               the initial pairs (the same for every distilled method, so their
                               sets start from the same real pairs)
    similarity                 the similarity's random initialization (lowrank's L)
    eval [s]                   evaluation seed s of every method (a student's weights, batch
                               order, augmentation, random pairs, the first k-center point)
    epoch [e]                  (under an evaluation seed) the order of full-data epoch e

A stream id is the CRC-32 of its name, so adding a stream never renumbers the others.
"""
from __future__ import annotations

import zlib
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch


def stream_id(name: str) -> int:
    return zlib.crc32(name.encode())


def derive_seed(seed: int, stream: str, *keys: int) -> int:
    """A 63-bit seed for `stream` (and `keys`) of the run seeded with `seed` (>= 0)."""
    sequence = np.random.SeedSequence(entropy=seed, spawn_key=(stream_id(stream), *keys))
    return int(sequence.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def generator(seed: int, stream: str, *keys: int) -> torch.Generator:
    """A torch.Generator seeded with `derive_seed(seed, stream, *keys)`."""
    return torch.Generator().manual_seed(derive_seed(seed, stream, *keys))


@contextmanager
def seeded(seed: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """Inside the block torch's global generators (the CPU's, and `device`'s if a GPU) start
    from `seed`; after it they are as they were. Code that draws from the global generator
    (dropout, module initialization, augmentation) is then reproducible without library
    code reseeding anything for the caller."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


__all__ = ["derive_seed", "generator", "seeded", "stream_id"]
