"""The gender model: one estimator kind, one registry, one loader.

``KINDS`` maps a saved model's ``kind`` to its class (:mod:`gender_lib.modeling.estimators`);
:func:`load` rebuilds any saved model from the kind its sidecar records (never from a file suffix
or time). The kinds ``features`` and ``finetune`` were retired in 0.2: they measured no better
than the frozen head at many times the cost (docs/results.md); ``experiments/kinds.py`` keeps them.
"""

from __future__ import annotations

import os
from pathlib import Path

from gender_lib.modeling.estimators import FrozenHead, read_saved
from gender_lib.modeling.mlp import HeadError

KINDS: dict[str, type[FrozenHead]] = {FrozenHead.kind: FrozenHead}
#: Kinds earlier versions saved, with what to do about a model of that kind.
RETIRED = {
    kind: f"the model kind {kind!r} was retired in gender_lib 0.2 (it measured no better than the frozen head: docs/results.md); "
    "train a frozen head (`gender-lib train`, --flip-tta true for flip averaging), or load it from a checkout with experiments.kinds.load()"
    for kind in ("features", "finetune")
}


def estimator_for(config: object) -> FrozenHead:
    """The unfitted estimator a :class:`gender_lib.config.Config` describes (its head settings and seed)."""
    return FrozenHead(config.head, seed=config.seed)  # type: ignore[attr-defined]


def load(path: str | os.PathLike[str]) -> FrozenHead:
    """The fitted estimator saved at ``path`` (``.npz`` + ``.json``), its sidecar as ``meta_``.

    Raises :class:`HeadError` for a damaged or changed file, a retired or unknown kind, and
    :class:`~gender_lib.errors.UserFileNotFoundError` where there is none."""
    meta, arrays = read_saved(path)
    kind = meta["kind"]
    if kind in RETIRED:
        raise HeadError(f"{path}: {RETIRED[kind]}")
    if kind not in KINDS:
        raise HeadError(f"{Path(path).with_suffix('.json')}: unknown model kind {kind!r}; this gender_lib knows {sorted(KINDS)}")
    return KINDS[kind].from_saved(meta, arrays, source=Path(path))


__all__ = ["KINDS", "RETIRED", "FrozenHead", "HeadError", "estimator_for", "load"]
