"""A tiny deterministic backbone for cache and pipeline tests (no model, milliseconds per batch)."""

from __future__ import annotations

import time

import numpy as np


class ColourBackbone:
    """Descriptor = per-channel mean and std of an 8x8 thumbnail; counts the images it embeds."""

    name = "colour"
    dim = 6
    input_size = (8, 8)
    preprocessing = "rgb;resize8"

    def __init__(self, delay: float = 0.0, tag: str = "v1"):
        self.id = f"colour-{tag}"
        self.delay = delay
        self.embedded = 0

    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        from PIL import Image

        return np.asarray(Image.fromarray(rgb).resize(self.input_size), np.float32)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        time.sleep(self.delay)
        self.embedded += len(batch)
        return np.concatenate([batch.mean(axis=(1, 2)), batch.std(axis=(1, 2))], axis=1).astype(np.float32)

    def describe(self) -> dict:
        return {"name": self.name, "id": self.id, "dim": self.dim, "preprocessing": self.preprocessing}

    def close(self) -> None:
        pass


def toy_model(backbone: dict, path, epochs: int = 2):
    """A frozen head on ``backbone``'s 128-d descriptors trained on random numbers, threshold 0.5,
    saved at ``path``: tests plumbing, not accuracy. Returns (path, the fitted model)."""
    from gender_lib.config import HeadConfig
    from gender_lib.modeling import FrozenHead

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 128)).astype(np.float32), np.arange(64) % 2
    model = FrozenHead(HeadConfig(epochs=epochs)).fit(x, y, x, y)
    model.threshold_ = 0.5
    return model.save(path, {"backbone": backbone, "descriptor_dim": 128}), model
