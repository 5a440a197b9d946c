"""How should pre-aligned 128x128 crops be fed to dlib's descriptor: 5-point chip or plain resize?

On a seeded sample of people from the real combined/aligned folder (2 photos each), embeds every
image both ways and measures, for each way:

* verification ROC-AUC: same-person pairs vs different-person pairs (Euclidean distance);
* gender accuracy of a logistic regression, 5-fold cross-validated with people kept apart;
* seconds per image (prepare + embed).

    .venv/bin/python benchmarks/dlib_align.py [--people 200]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from gender_lib import config
from gender_lib.fileio import write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(config.paths().root / "benchmarks" / "results" / "dlib_align.json"))
    args = parser.parse_args()

    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold, cross_val_score

    from gender_lib import backbones
    from gender_lib import dataset as ds

    root = config.paths().datasets / "combined" / "aligned"
    table, _, _ = ds.read_records(root)
    counts = table.groupby("subject").size()
    eligible = sorted(counts[counts >= 2].index)
    rng = np.random.default_rng(args.seed)
    people = rng.choice(eligible, size=min(args.people, len(eligible)), replace=False)
    rows = [table[table["subject"] == p].sample(2, random_state=args.seed) for p in people]
    paths = [p for r in rows for p in r["path"]]
    genders = np.array([g for r in rows for g in r["gender"]]) == "F"
    groups = np.repeat(np.arange(len(rows)), 2)
    images = [ds.load_rgb(p) for p in paths]
    result = {"people": len(rows), "images": len(paths), "modes": {}}
    for align in ("chip", "resize"):
        backbone = backbones.DlibBackbone(align=align)
        start = time.perf_counter()
        x = backbone.embed(np.stack([backbone.prepare(im) for im in images]))
        seconds = (time.perf_counter() - start) / len(paths)
        pairs = x.reshape(len(rows), 2, -1)
        same = np.linalg.norm(pairs[:, 0] - pairs[:, 1], axis=1)
        other = np.linalg.norm(pairs[:, 0] - np.roll(pairs[:, 1], 1, axis=0), axis=1)
        auc = roc_auc_score(np.r_[np.ones_like(same), np.zeros_like(other)], -np.r_[same, other])
        accuracy = cross_val_score(LogisticRegression(max_iter=2000), x, genders, groups=groups, cv=GroupKFold(5)).mean()
        result["modes"][align] = {
            "verification_auc": auc,
            "gender_cv_accuracy": accuracy,
            "seconds_per_image": seconds,
            "mean_same_distance": float(same.mean()),
            "mean_other_distance": float(other.mean()),
        }
        print(
            f"{align:<7} verification AUC {auc:.4f}  gender accuracy {accuracy:.4f}  {seconds * 1000:.0f} ms/image "
            f"(same {same.mean():.3f} vs other {other.mean():.3f})"
        )
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
