"""The model kinds: one estimator class each, one registry, one loader.

``KINDS`` maps ``Config.head.mode`` to its class (:mod:`gender_lib.modeling.estimators`);
:func:`estimator_for` builds the one a config names, :func:`load` rebuilds any saved model from the
kind its sidecar records (never from a file suffix or time).
"""

from __future__ import annotations

import os
from pathlib import Path

from gender_lib.modeling.estimators import Estimator, FeaturesHead, FinetunedNetwork, FrozenHead, read_saved
from gender_lib.modeling.mlp import HeadError

KINDS: dict[str, type[Estimator]] = {cls.kind: cls for cls in (FrozenHead, FeaturesHead, FinetunedNetwork)}


def estimator_for(config: object, cache_root: str | os.PathLike[str] | None = None) -> Estimator:
    """The unfitted estimator of ``config.head.mode`` (a :class:`gender_lib.config.Config`)."""
    return KINDS[config.head.mode](config.head, seed=config.seed, cache_root=cache_root)  # type: ignore[attr-defined]


def load(path: str | os.PathLike[str], cache_root: str | os.PathLike[str] | None = None) -> Estimator:
    """The fitted estimator saved at ``path`` (``.npz`` + ``.json``), its sidecar as ``meta_``.

    Raises :class:`HeadError` for a damaged or changed file or an unknown kind, and
    :class:`~gender_lib.errors.UserFileNotFoundError` where there is none. ``cache_root``: where
    dlib's converted Keras model is kept (the level-2 kinds rebuild its top from it)."""
    meta, arrays = read_saved(path)
    kind = meta["kind"]
    if kind not in KINDS:
        raise HeadError(f"{Path(path).with_suffix('.json')}: unknown model kind {kind!r}; this gender_lib knows {sorted(KINDS)}")
    return KINDS[kind].from_saved(meta, arrays, cache_root, source=Path(path))


__all__ = ["KINDS", "Estimator", "FeaturesHead", "FinetunedNetwork", "FrozenHead", "HeadError", "estimator_for", "load"]
