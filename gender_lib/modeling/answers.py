"""Age group and P(correct): what lets a gender answer say "uncertain" instead of guessing.

Two small models fitted after the gender head, on the same backbone output, saved in the same file:

* :class:`AgeGroups`: the eight age groups of :data:`gender_lib.readers.AGE_BINS` from the frozen
  descriptor, a multinomial logistic regression (scikit-learn) trained on the train split (face and
  mirror image where the rows hold both). The group reported is the *median* of the predicted
  distribution, not its mode: the groups are ordered, and on the full data's validation split the
  median gave exact 0.498 / one-off 0.920 against the mode's 0.490 / 0.902 (MLPs of 64-256 units,
  an RBF SVM and a Nystroem-kernel regression were no better than 0.501 / 0.927; see
  docs/results.md).
* :class:`Correctness`: P(the gender answer is right) from the head's margin (distance of its logit
  from the threshold's) and the age-group probabilities (with their products with the margin), a
  logistic regression fitted on the **validation** split. The level ``min_confidence_`` is chosen on
  person-grouped out-of-fold P(correct) of that split (5 folds), so it is not chosen on the values a
  model fitted on the same faces gives; the final model is then fitted on the whole split.

Both predict with NumPy (no scikit-learn or TensorFlow at prediction).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from gender_lib.readers import AGE_BINS

#: Age-group names, youngest first (the manifest's ``age_group`` column).
AGE_GROUPS = tuple(f"{lo}-{hi}" if hi < 200 else f"{lo}+" for lo, hi in AGE_BINS)
#: The groups under 15 years ("looks under 15": the gender answer there is near chance).
CHILD_GROUPS = ("0-2", "3-7", "8-14")
#: Years each group stands for in the mean absolute error (midpoints; 60+ as 65).
GROUP_YEARS = {g: (lo + min(hi, 70)) / 2 for g, (lo, hi) in zip(AGE_GROUPS, AGE_BINS)}
#: Regularisation of the age regression (C of scikit-learn's LogisticRegression; 0.01-1 gave the
#: same validation exact accuracy to 0.001 on the full data).
AGE_C = 0.1
FOLDS = 5


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclasses.dataclass
class _Linear:
    """Standardise, then an affine map: what a fitted scikit-learn logistic regression is."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray  # (d, k)
    intercept: np.ndarray  # (k,)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, np.float64) - self.mean) / self.scale) @ self.coef + self.intercept

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, c: float, seed: int) -> _Linear:
        from sklearn.linear_model import LogisticRegression

        x = np.asarray(x, np.float64)
        mean, scale = x.mean(axis=0), np.where(x.std(axis=0) > 1e-12, x.std(axis=0), 1.0)
        if len(np.unique(y)) < 2:  # one class: a constant, sure of it
            return cls(mean, scale, np.zeros((x.shape[1], 1)), np.array([8.0 if y[0] else -8.0]))
        model = LogisticRegression(C=c, max_iter=5000, random_state=seed).fit((x - mean) / scale, y)
        return cls(mean, scale, model.coef_.T.astype(np.float64), model.intercept_.astype(np.float64))

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}/{k}": getattr(self, k) for k in ("mean", "scale", "coef", "intercept")}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str) -> _Linear:
        return cls(*(arrays[f"{prefix}/{k}"].astype(np.float64) for k in ("mean", "scale", "coef", "intercept")))


class AgeGroups:
    """Age group of a face from its descriptor views (n, views, d), scikit-learn style.

    Fitted attributes: ``groups_`` (the groups seen in training, youngest first), ``linear_``.
    """

    def __init__(self, c: float = AGE_C, seed: int = 0):
        self.c, self.seed = c, seed

    def fit(self, views: np.ndarray, groups: Sequence[str]) -> AgeGroups:
        """``views``: (n, v, d) float; ``groups``: names of :data:`AGE_GROUPS` ('unknown' rows are left out)."""
        groups = np.asarray(groups).astype(str)
        known = np.isin(groups, AGE_GROUPS)
        self.groups_ = tuple(g for g in AGE_GROUPS if g in set(groups[known]))
        index = np.array([self.groups_.index(g) for g in groups[known]], dtype=int)
        v = views[known]
        self.linear_ = _Linear.fit(v.reshape(-1, v.shape[-1]), np.repeat(index, v.shape[1]), self.c, self.seed)
        return self

    def predict_proba(self, views: np.ndarray) -> np.ndarray:
        """(n, len(groups_)) float64: P(group), averaged over the views."""
        n, v, d = views.shape
        p = _softmax(self.linear_(views.reshape(-1, d))).reshape(n, v, -1)
        return p.mean(axis=1)

    @staticmethod
    def median(p: np.ndarray) -> np.ndarray:
        """Index of the median group of each distribution (n, k) (int, n)."""
        return np.minimum((np.cumsum(p, axis=1) < 0.5).sum(axis=1), p.shape[1] - 1)

    def full_proba(self, p: np.ndarray) -> np.ndarray:
        """(n, 8): ``p`` placed in the columns of :data:`AGE_GROUPS` (zeros for unseen groups)."""
        out = np.zeros((len(p), len(AGE_GROUPS)))
        out[:, [AGE_GROUPS.index(g) for g in self.groups_]] = p
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        return self.linear_.arrays("age") | {"age/groups": np.array([AGE_GROUPS.index(g) for g in self.groups_])}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> AgeGroups | None:
        if "age/coef" not in arrays:
            return None  # a model saved before age groups existed
        model = cls()
        model.linear_ = _Linear.from_arrays(arrays, "age")
        model.groups_ = tuple(AGE_GROUPS[int(i)] for i in arrays["age/groups"])
        return model


def margin(p_female: np.ndarray, threshold: float) -> np.ndarray:
    """|logit P(female) - logit threshold|: how far an answer is from the other one (float64, n)."""
    q = np.clip(np.asarray(p_female, np.float64), 1e-7, 1 - 1e-7)
    t = min(max(float(threshold), 1e-7), 1 - 1e-7)
    return np.abs(np.log(q / (1 - q)) - np.log(t / (1 - t)))


def correctness_features(margins: np.ndarray, age_p: np.ndarray | None) -> np.ndarray:
    """The inputs of :class:`Correctness`: margin, the 8 age-group probabilities and their products with it."""
    m = np.asarray(margins, np.float64)[:, None]
    return m if age_p is None else np.hstack([m, age_p, m * age_p])


#: A level is chosen for a target accuracy t only on at least ``MIN_ERRORS / (1 - t)`` faces (667 for
#: 98.5%): room for ten errors among them. Fewer, and the level is the fallback (the shipped model's).
MIN_ERRORS = 10


def faces_for(target: float) -> int:
    """The fewest validation faces a level for ``target`` accuracy is chosen on (:data:`MIN_ERRORS`)."""
    return int(np.ceil(MIN_ERRORS / max(1.0 - float(target), 1e-3)))


class Correctness:
    """P(the gender answer is right), and the level above which an answer is given.

    Fitted on the validation split, the level chosen on all its faces pooled, each source's
    coverage and accuracy at that level recorded. Two other ways measured no better on a source
    held out (docs/results.md, "Two sources"): the highest of each source's own levels (it
    answered 10-22% of an unseen source's faces) and P(correct) fitted on answers of heads that
    never saw each face's source. Where the split is too small for any level, ``fallback`` is
    used and said.

    Fitted attributes: ``linear_``, ``min_confidence_`` (float; 1.0 where no level reaches the
    target on validation), ``target_``, ``val_coverage_`` and ``val_accuracy_`` (out-of-fold, at
    that level), ``val_by_source_`` (each source's coverage and accuracy at it), ``rule_`` (how
    the level was chosen, in words).
    """

    def __init__(self, target: float = 0.985, seed: int = 0):
        self.target, self.seed = target, seed

    def fit(
        self,
        features: np.ndarray,
        correct: np.ndarray,
        people: Sequence[str],
        sources: Sequence[str] | None = None,
        fallback: float | None = None,
    ) -> Correctness:
        """``features`` (n, f) from :func:`correctness_features` on the validation split; ``correct``
        0/1 per face; ``people``: person ids, so that out-of-fold folds keep a person together;
        ``sources``: each face's source (reported in ``val_by_source_``); ``fallback``: the level
        where the split has fewer than :func:`faces_for` faces (None: choose anyway)."""
        from sklearn.model_selection import GroupKFold

        correct = np.asarray(correct).astype(int)
        people = np.asarray(people).astype(str)
        sources = np.asarray(sources if sources is not None else [""] * len(correct)).astype(str)
        oof = np.full(len(correct), correct.mean())
        folds = min(FOLDS, len(np.unique(people)))
        if folds >= 2:
            for train, held in GroupKFold(folds).split(features, correct, people):
                oof[held] = _sigmoid(_Linear.fit(features[train], correct[train], 1.0, self.seed)(features[held])[:, 0])
        need = faces_for(self.target)
        if fallback is not None and len(correct) < need:
            level = float(fallback)
            self.rule_ = f"fallback level: {len(correct)} validation faces are too few to choose one, at least {need} for this target"
        else:
            level = choose_level(oof, correct, self.target)[0]
            self.rule_ = "chosen on validation"
        answered = oof >= level
        self.min_confidence_ = level
        self.val_coverage_ = float(answered.mean())
        self.val_accuracy_ = float(correct[answered].mean()) if answered.any() else float("nan")
        self.val_by_source_ = {
            s: {
                "n": int(rows.sum()),
                "coverage": float(answered[rows].mean()),
                "accuracy": float(correct[rows & answered].mean()) if (rows & answered).any() else None,
            }
            for s in sorted(set(sources))
            if s and (rows := sources == s).any()
        }
        self.target_ = self.target
        self.linear_ = _Linear.fit(features, correct, 1.0, self.seed)
        return self

    def p_correct(self, features: np.ndarray) -> np.ndarray:
        """P(correct), float64 (n,)."""
        return _sigmoid(self.linear_(features)[:, 0])

    def arrays(self) -> dict[str, np.ndarray]:
        return self.linear_.arrays("confidence")

    def record(self) -> dict[str, float]:
        """What the sidecar says of it."""
        return {
            "target_accuracy": float(self.target_),
            "min_confidence": float(self.min_confidence_),
            "val_coverage": float(self.val_coverage_),
            "val_accuracy": float(self.val_accuracy_),
            "val_by_source": self.val_by_source_,
            "rule": self.rule_,
        }

    @classmethod
    def from_saved(cls, arrays: dict[str, np.ndarray], record: dict[str, float] | None) -> Correctness | None:
        if "confidence/coef" not in arrays or not record:
            return None
        model = cls(record["target_accuracy"])
        model.linear_ = _Linear.from_arrays(arrays, "confidence")
        model.target_, model.min_confidence_ = record["target_accuracy"], record["min_confidence"]
        model.val_coverage_, model.val_accuracy_ = record.get("val_coverage", float("nan")), record.get("val_accuracy", float("nan"))
        model.val_by_source_, model.rule_ = record.get("val_by_source", {}), record.get("rule", "chosen on validation")
        return model


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def choose_level(p_correct: np.ndarray, correct: np.ndarray, target: float) -> tuple[float, float, float]:
    """(level, coverage, accuracy): the lowest P(correct) level whose answered faces (P >= level)
    are right at least ``target`` of the time; (1.0, 0, nan) where no level reaches it."""
    p, c = np.asarray(p_correct, np.float64), np.asarray(correct).astype(int)
    order = np.argsort(-p, kind="stable")  # from the most confident down: one pass, not one per level
    p, c = p[order], c[order]
    accuracy = np.cumsum(c) / np.arange(1, len(c) + 1)
    ends = np.r_[np.flatnonzero(p[:-1] != p[1:]), len(p) - 1]  # a level answers every face tied with it
    reached = ends[accuracy[ends] >= target]
    if not len(reached):
        return 1.0, 0.0, float("nan")
    k = int(reached.max())
    return float(p[k]), (k + 1) / len(p), float(accuracy[k])


def risk_coverage(p_correct: np.ndarray, correct: np.ndarray) -> dict[str, list[float]]:
    """Accuracy on the answered faces against coverage, answering from the most confident down
    (El-Yaniv & Wiener, JMLR 2010): 101 points of coverage 0.01 ... 1."""
    order = np.argsort(-np.asarray(p_correct, np.float64), kind="stable")
    c = np.asarray(correct, np.float64)[order]
    accuracy = np.cumsum(c) / np.arange(1, len(c) + 1)
    coverage = np.linspace(0.01, 1, 100)
    at = np.maximum(np.ceil(coverage * len(c)).astype(int) - 1, 0)
    return {"coverage": coverage.round(2).tolist(), "accuracy": accuracy[at].tolist()}


UNCERTAIN = "uncertain"
#: An uncertain answer is "close to the threshold" where its margin is below this (logit units:
#: P(female) within about 0.23 of a threshold near 0.5).
CLOSE_MARGIN = 1.0


@dataclasses.dataclass
class Answers:
    """What a model says of n faces. ``label``: ``"F"``, ``"M"`` or ``"uncertain"`` (P(correct)
    below ``level``); ``forced``: the label P(female) and the threshold give regardless."""

    p_female: np.ndarray  # float64 (n,)
    threshold: float
    p_correct: np.ndarray  # float64 (n,); NaN where the model has no correctness model
    level: float  # the min_confidence applied (0: every face answered)
    age_p: np.ndarray | None  # float64 (n, 8) over AGE_GROUPS, or None (a model without age groups)

    @property
    def forced(self) -> np.ndarray:
        return np.where(self.p_female >= self.threshold, "F", "M")

    @property
    def answered(self) -> np.ndarray:
        """bool (n,): P(correct) at or above the level (every face where there is no P(correct))."""
        return np.isnan(self.p_correct) | (self.p_correct >= self.level)

    @property
    def label(self) -> np.ndarray:
        return np.where(self.answered, self.forced, UNCERTAIN)

    @property
    def age_index(self) -> np.ndarray | None:
        return None if self.age_p is None else AgeGroups.median(self.age_p)

    @property
    def age_group(self) -> list[str]:
        """The median age group of each face ('' without an age model)."""
        return [""] * len(self.p_female) if self.age_p is None else [AGE_GROUPS[i] for i in self.age_index]

    @property
    def age_group_p(self) -> np.ndarray:
        """P(the reported age group), float64 (n,); NaN without an age model."""
        if self.age_p is None:
            return np.full(len(self.p_female), np.nan)
        return self.age_p[np.arange(len(self.age_p)), self.age_index]

    @property
    def p_child(self) -> np.ndarray:
        """P(under 15): the three youngest groups' probabilities summed; NaN without an age model."""
        return np.full(len(self.p_female), np.nan) if self.age_p is None else self.age_p[:, : len(CHILD_GROUPS)].sum(axis=1)

    @property
    def reason(self) -> list[str]:
        """Why a face is uncertain ('' where answered): looks under 15, close to the threshold, or both."""
        close = margin(self.p_female, self.threshold) < CLOSE_MARGIN
        out = []
        for answered, child, near in zip(self.answered, self.p_child >= 0.5, close):
            parts = [] if answered else [p for p, on in (("looks under 15", child), ("close to the threshold", near or not child)) if on]
            out.append("; ".join(parts))
        return out
