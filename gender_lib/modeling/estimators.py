"""The gender estimator, in scikit-learn's style: an MLP on the backbone's frozen descriptor.

:class:`FrozenHead` learns on the train split and chooses ``threshold_`` on the validation split
in :meth:`~FrozenHead.fit`; with flip averaging (``flip_tta``) each face is read twice, as it is
and mirrored (the backbone's ``descriptor+mirror`` rows), trained on both and P(female) averaged.
:meth:`~FrozenHead.fit_answers` adds the age groups and P(correct) (:mod:`gender_lib.modeling.answers`).
Saved as ``<name>.npz`` (arrays) and ``<name>.json`` (``kind``, backbone record, threshold, config,
history, the npz's sha256); :func:`gender_lib.modeling.load` reads the kind there.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from gender_lib.config import HeadConfig
from gender_lib.errors import UserFileNotFoundError
from gender_lib.fileio import publish_together, sha256_bytes, sha256_file
from gender_lib.metrics import CLASSES
from gender_lib.modeling import answers, mlp
from gender_lib.modeling.mlp import MLP, HeadError

FORMAT = "gender_lib.model/1"


class FrozenHead:
    """The MLP on the frozen descriptor of any backbone: rows (n, dim), or (n, 2 * dim) with flip
    averaging (the descriptor of the face, then of its mirror image).

    Fitted attributes: ``head_`` (:class:`~gender_lib.modeling.mlp.MLP`), ``threshold_`` (float,
    chosen on validation to maximise balanced accuracy), ``history_`` (per-epoch losses and
    accuracies, ``best_epoch``), ``train_seconds_``; after :meth:`fit_answers` also ``age_``
    (:class:`~gender_lib.modeling.answers.AgeGroups` or None) and ``confidence_``
    (:class:`~gender_lib.modeling.answers.Correctness`); after :func:`~gender_lib.modeling.load`
    also ``meta_`` (the sidecar). A model saved without the last two answers every face, without an age.
    """

    kind: ClassVar[str] = "frozen"
    classes_ = CLASSES
    age_: answers.AgeGroups | None = None
    confidence_: answers.Correctness | None = None

    def __init__(self, config: HeadConfig | None = None, *, seed: int = 0):
        self.config = config or HeadConfig()
        self.seed = int(seed)

    def get_params(self) -> dict[str, Any]:
        return {"config": self.config, "seed": self.seed}

    @property
    def flip(self) -> bool:
        """Whether P(female) is the average over the face and its mirror image."""
        return bool(self.config.flip_tta)

    @property
    def backbone_output(self) -> str:
        """The backbone output whose rows :meth:`fit` and :meth:`predict_proba` take (:data:`gender_lib.backbones.OUTPUTS`)."""
        return "descriptor+mirror" if self.flip else "descriptor"

    def _views(self, x: np.ndarray) -> np.ndarray:
        """(n, views, dim) float64: the descriptor of each face (and of its mirror image with flip averaging)."""
        x = np.asarray(x, np.float64)
        views = 2 if self.flip else 1
        if x.ndim != 2 or x.shape[1] % views:
            raise HeadError(f"expected descriptor rows (n, {views} x dim), got {x.shape}")
        return x.reshape(len(x), views, x.shape[1] // views)

    def descriptors(self, x: np.ndarray) -> np.ndarray:
        """The (n, dim) descriptors of the faces, not mirrored: what the logistic-regression baseline reads."""
        return self._views(x)[:, 0]

    def fit(self, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, *, progress: bool = True) -> FrozenHead:
        """Train the MLP on every view of the train faces (early stopping on the val faces as they
        are), then choose ``threshold_`` on val. ``x_*``: rows of :attr:`backbone_output`; ``y_*``:
        0 (M) / 1 (F). Raises :class:`~gender_lib.modeling.mlp.HeadError` for splits it cannot use."""
        started = time.perf_counter()
        f_train, f_val = self._views(x_train), self._views(x_val)
        views = f_train.shape[1]
        model, self.history_ = mlp.train_keras(f_train.reshape(-1, f_train.shape[-1]), np.repeat(y_train, views), f_val[:, 0], y_val, self.config, self.seed)
        self.head_ = MLP.from_keras(model)
        self.threshold_ = mlp.choose_threshold(y_val, self._p_from_views(f_val))
        self.train_seconds_ = time.perf_counter() - started
        return self

    def _p_from_views(self, f: np.ndarray) -> np.ndarray:
        p = self.head_(f.reshape(-1, f.shape[-1])).reshape(f.shape[0], f.shape[1])
        return p.mean(axis=1) if self.flip else p[:, 0]

    def p_female_views(self, x: np.ndarray) -> np.ndarray:
        """P(female) of each view the rows hold, float64 (n, views): the face, then its mirror image."""
        f = self._views(x)
        return self.head_(f.reshape(-1, f.shape[-1])).reshape(f.shape[0], f.shape[1])

    def _check_fitted(self) -> None:
        if not hasattr(self, "head_"):
            raise HeadError(f"this {type(self).__name__} is not fitted yet: call fit(...) or load a saved model")

    def p_female(self, x: np.ndarray) -> np.ndarray:
        """P(female), float64 (n,), averaged over the views with flip averaging."""
        self._check_fitted()
        return self._p_from_views(self._views(x)) if len(x) else np.zeros(0)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """(n, 2) float64: P(male), P(female) per row (columns in ``classes_`` order)."""
        p = self.p_female(x)
        return np.stack([1 - p, p], axis=1)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Labels ``"M"`` / ``"F"``: P(female) compared with ``threshold_``."""
        return np.where(self.p_female(x) >= self.threshold_, CLASSES[1], CLASSES[0])

    def fit_answers(
        self,
        x_train: np.ndarray,
        age_train: Any,
        x_val: np.ndarray,
        y_val: np.ndarray,
        people_val: Any,
        target: float = 0.985,
        sources_val: Any = None,
        fallback: float | None = None,
    ) -> FrozenHead:
        """After :meth:`fit`: the age-group model on the train faces (``age_train``: their
        :data:`~gender_lib.modeling.answers.AGE_GROUPS` names; none where fewer than two groups are
        known), then P(correct) and its level for ``target`` accuracy on the val faces (``people_val``:
        their person ids; ``sources_val``, ``fallback``: see :meth:`~gender_lib.modeling.answers.Correctness.fit`).
        The test split is never read."""
        self._check_fitted()
        groups = np.asarray(age_train).astype(str)
        known = set(groups[np.isin(groups, answers.AGE_GROUPS)])
        self.age_ = answers.AgeGroups(seed=self.seed).fit(self._views(x_train), groups) if len(known) >= 2 else None
        p = self.p_female(x_val)
        correct = (p >= self.threshold_).astype(int) == np.asarray(y_val).astype(int)
        features = answers.correctness_features(answers.margin(p, self.threshold_), self._age_p(x_val))
        self.confidence_ = answers.Correctness(target, self.seed).fit(features, correct, people_val, sources_val, fallback)
        return self

    def _age_p(self, x: np.ndarray) -> np.ndarray | None:
        return None if self.age_ is None else self.age_.full_proba(self.age_.predict_proba(self._views(x)))

    def answer(self, x: np.ndarray, min_confidence: float | None = None) -> answers.Answers:
        """Gender label or ``uncertain``, P(female), P(correct) and the age group of each row.

        ``min_confidence``: answer where P(correct) is at least this; None or negative: the level
        chosen on validation (``confidence_.min_confidence_``); 0: every face is answered."""
        self._check_fitted()
        p = self.p_female(x)
        age_p = self._age_p(x) if len(x) else None
        if self.confidence_ is None:
            return answers.Answers(p, self.threshold_, np.full(len(p), np.nan), 0.0, age_p)
        level = self.confidence_.min_confidence_ if min_confidence is None or min_confidence < 0 else float(min_confidence)
        features = answers.correctness_features(answers.margin(p, self.threshold_), age_p)
        return answers.Answers(p, self.threshold_, self.confidence_.p_correct(features) if len(p) else np.zeros(0), level, age_p)

    @property
    def n_parameters_(self) -> int:
        """Trained parameters saved: the MLP's weights, the age and correctness models', not input statistics."""
        return int(sum(a.size for k, a in self._arrays().items() if not k.endswith(("/mean", "/variance", "/scale", "/groups"))))

    # ---- save / load

    def _arrays(self) -> dict[str, np.ndarray]:
        return self.head_.arrays() | (self.age_.arrays() if self.age_ else {}) | (self.confidence_.arrays() if self.confidence_ else {})

    def save(self, path: str | os.PathLike[str], meta: dict[str, Any] | None = None) -> Path:
        """``<path>`` (.npz, the arrays) and ``<path>.json`` (``meta`` plus what the model is), published together."""
        path = Path(path)
        if path.suffix != ".npz":
            raise HeadError(f"{path}: a model is saved as .npz (its sidecar .json beside it)")
        self._check_fitted()
        if not isinstance((meta or {}).get("backbone"), dict):
            raise HeadError(f"{path}: a model is saved with meta['backbone'], the record of the backbone whose rows it read (backbone.describe())")
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **self._arrays())
        data = buffer.getvalue()
        sidecar = {
            **(meta or {}),
            "format": FORMAT,
            "kind": self.kind,
            "classes": list(CLASSES),
            "output": "P(female)",
            "threshold": float(self.threshold_),
            "seed": self.seed,
            "config": self.config.to_dict(),
            "history": self.history_,
            "age_groups": list(self.age_.groups_) if self.age_ else [],
            "answers": self.confidence_.record() if self.confidence_ else None,
            "train_seconds": round(float(getattr(self, "train_seconds_", 0.0)), 1),
            "weights_sha256": sha256_bytes(data),
            "weights_bytes": len(data),
            "versions": mlp.versions(),
        }
        text = json.dumps(sidecar, indent=2, default=str) + "\n"
        publish_together([(path, lambda tmp: Path(tmp).write_bytes(data)), (path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(text))])
        return path

    @classmethod
    def from_saved(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray], source: Path | None = None) -> FrozenHead:
        """The fitted estimator a sidecar and its arrays describe (see :func:`gender_lib.modeling.load`);
        :class:`HeadError` where the backbone record is not the output it reads."""
        from gender_lib.backbones import output_of

        known = {f.name for f in dataclasses.fields(HeadConfig)}
        settings = {k: v for k, v in meta.get("config", {}).items() if k in known}
        model = cls(
            dataclasses.replace(HeadConfig(), **(settings | {"widths": tuple(settings.get("widths", HeadConfig().widths))})), seed=int(meta.get("seed", 0))
        )
        try:
            model.head_ = MLP.from_arrays(arrays)
        except KeyError as error:  # an npz of something else, with a sidecar that matches it
            raise HeadError(f"{source}: holds no MLP weights ({error.args[0]} missing); retrain or restore it") from None
        model.threshold_ = float(meta["threshold"])
        model.age_ = answers.AgeGroups.from_arrays(arrays)
        model.confidence_ = answers.Correctness.from_saved(arrays, meta.get("answers"))
        model.history_ = meta.get("history", {})
        model.train_seconds_ = float(meta.get("train_seconds", 0.0))
        model.meta_ = meta
        if output_of(meta["backbone"]) != model.backbone_output:  # a sidecar edited by hand, or damaged
            given = output_of(meta["backbone"])
            raise HeadError(f"{source}: a {cls.kind} model reads {model.backbone_output} rows, but its backbone record gives {given}; retrain or restore it")
        model._restore(arrays)
        return model

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        """Subclasses (experiments/) with more than the MLP rebuild the rest here."""

    def summary(self) -> str:
        """Rounded, stable summary of a saved model (what notebooks print), from its record ``meta_``."""
        meta = getattr(self, "meta_", None)
        if not meta or "val_metrics" not in meta:
            raise HeadError("summary() reads the record the train stage saves: train with gender_lib.stages.train, or load such a model")
        history = meta.get("history", {})
        val, counts, manifest, baseline = meta["val_metrics"], meta["counts"], meta["manifest"], meta["baseline_val_metrics"]
        return "\n".join(
            [
                f"model: {self.kind} head on the {self.backbone_output} output" + (f" ({meta['fitted_as']})" if meta.get("fitted_as") else ""),
                f"backbone: {meta['backbone']['id']} ({meta['backbone']['dim']}-d)",
                f"split ({manifest['protocol']}{', LEAKY' if manifest.get('leaky') else ''}): "
                f"train {counts['train']}, val {counts['val']}, test {counts['test']}",
                f"head: widths {list(self.config.widths)}, dropout {self.config.dropout}, l2 {self.config.l2}, seed {self.seed}; "
                f"flip averaging {'on' if self.flip else 'off'}",
                f"best epoch {int(history.get('best_epoch', [0])[0])} of {len(history.get('loss', []))}; threshold (chosen on val) {self.threshold_:.3f}",
                f"val: accuracy {val['accuracy']:.3f}, macro F1 {val['macro_f1']:.3f}, ROC-AUC {val['roc_auc']:.3f}",
                f"logistic-regression baseline val: accuracy {baseline['accuracy']:.3f}, ROC-AUC {baseline['roc_auc']:.3f}",
                f"trained parameters: {self.n_parameters_}",
                self.answers_line(),
            ]
        )

    def answers_line(self) -> str:
        """What the model says besides the gender: age groups, and its confidence level."""
        age = f"age groups: {len(self.age_.groups_)} ({self.age_.groups_[0]} ... {self.age_.groups_[-1]})" if self.age_ else "age groups: none"
        c = self.confidence_
        if c is None:
            return f"{age}; no P(correct): every face answered (`gender-lib answers` adds it)"
        return (
            f"{age}; answers where P(correct) >= {c.min_confidence_:.3f} for {c.target_:.1%} accuracy ({c.rule_}; "
            f"out-of-fold val coverage {c.val_coverage_:.3f})"
        )


def read_saved(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(sidecar, arrays) of a saved model: format and sha256 checked; :class:`HeadError` or
    :class:`~gender_lib.errors.UserFileNotFoundError` naming the file and what to do."""
    path = Path(path)
    side = path.with_suffix(".json")
    if not path.is_file():
        raise UserFileNotFoundError(f"{path}: no trained model here; run notebooks/03_train.ipynb or `gender-lib train`, or name another with --head")
    try:
        meta = json.loads(side.read_text())
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise ValueError(f"not a {FORMAT} sidecar ({found!r}: saved by another gender_lib version? train again)")
        missing = [k for k in ("kind", "threshold", "backbone") if k not in meta]
        if missing:
            raise ValueError(f"no {', '.join(missing)}")
    except (OSError, ValueError) as error:
        raise HeadError(f"{side}: model metadata missing or damaged ({error}); retrain or restore the checkpoint") from None
    if sha256_file(path) != meta.get("weights_sha256"):
        raise HeadError(f"{path}: its weights do not match the sha256 in {side.name} (changed or half-written); retrain or restore the checkpoint")
    try:
        with np.load(path, allow_pickle=False) as stored:
            return meta, {k: stored[k] for k in stored.files}
    except Exception as error:  # noqa: BLE001 - zipfile and numpy raise many types for damaged archives
        raise HeadError(f"{path}: cannot be read ({type(error).__name__}: {error}); retrain or restore the checkpoint") from None
