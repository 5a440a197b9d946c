"""Synthetic dataset trees for the reader, split and dataset tests (tiny random JPEGs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

FOLD_HEADER = "user_id\toriginal_image\tface_id\tage\tgender\tx\ty\tdx\tdy\ttilt_ang\tfiducial_yaw_angle\tfiducial_score"


def jpeg(path: Path, seed: int = 0, size=(48, 48), mode="RGB", **save) -> Path:
    """A random-noise image at ``path`` (JPEG unless ``format=`` says otherwise)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
    image.save(path, **save)
    return path


def combined_tree(root: Path) -> Path:
    """The original work's layout: 10 images of 8 people from three sources under ``root/aligned``."""
    names = {
        "25_M": ["nm0000001_rm111_1980-1-2_2005.jpg", "nm0000001_rm112_1980-1-2_2006.jpg", "111_1970-05-06_2000.jpg"],
        "25_F": ["nm0000002_rm113_1981-1-2_2006.jpg", "landmark_aligned_face.42.123_ab_o.jpg", "222_1971-05-06_2001.jpg"],
        "03_F": ["landmark_aligned_face.42.124_ab_o.jpg", "landmark_aligned_face.43.125_ab_o.jpg"],
        "60_M": ["nm0000003_rm114_1940-1-2_2000.jpg", "333_1940-05-06_2000.jpg"],
    }
    seed = 0
    for folder, files in names.items():
        for name in files:
            jpeg(root / "aligned" / folder / name, seed=seed)
            seed += 1
    return root


def fold_file(path: Path, rows: list[str], cut_last: bool = False) -> None:
    """An Adience ``fold_<k>_data.txt`` (CRLF lines like the real ones), optionally cut mid-row."""
    text = "\r\n".join([FOLD_HEADER] + rows) + "\r\n"
    if cut_last:
        text = text[: len(text) - 12]
    path.write_text(text)


def fold_row(user: str, image: str, face: int, age: str, gender: str) -> str:
    return f"{user}\t{image}\t{face}\t{age}\t{gender}\t0\t0\t10\t10\t0\t0\t50"


def adience_in_five_folds(root: Path, users_per_fold: int = 4, faces_per_user: int = 2) -> dict[str, int]:
    """A complete Adience tree with five fold files; returns {relative image path: official fold}."""
    official, seed = {}, 0
    for fold in range(5):
        rows = []
        for u in range(users_per_fold):
            user = f"u{fold}{u}"
            for face in range(faces_per_user):
                face_id = fold * 100 + u * 10 + face
                rows.append(fold_row(user, f"{seed}.jpg", face_id, "(25, 32)", "mf"[(u + face) % 2]))
                path = jpeg(root / "aligned" / user / f"landmark_aligned_face.{face_id}.{seed}.jpg", seed=seed)
                official[path.relative_to(root).as_posix()] = fold
                seed += 1
        fold_file(root / f"fold_{fold}_data.txt", rows)
    return official
