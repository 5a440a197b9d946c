"""Backbones, streaming extraction and the descriptor cache (hits, invalidation, growth, kills, bad images)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gender_lib import backbones as bb
from gender_lib import features as ft
from tests.fakes import ColourBackbone


def _images(folder: Path, n: int, start: int = 0) -> tuple[list[Path], list[str]]:
    folder.mkdir(parents=True, exist_ok=True)
    paths, keys = [], []
    for i in range(start, start + n):
        rgb = np.random.default_rng(i).integers(0, 256, (16, 16, 3), dtype=np.uint8)
        path = folder / f"img{i:03d}.png"
        Image.fromarray(rgb).save(path)
        paths.append(path)
        keys.append(hashlib.sha256(path.read_bytes()).hexdigest())
    return paths, keys


def _chunk_keys(cache_dir: Path) -> list[str]:
    keys: list[str] = []
    for chunk in sorted(cache_dir.glob("chunk-*.npz")):
        with np.load(chunk) as data:
            keys.extend(data["keys"].tolist())
    return keys


def test_rerun_over_unchanged_images_does_no_model_work(tmp_path):
    paths, keys = _images(tmp_path / "img", 10)
    backbone = ColourBackbone()
    first = ft.extract(paths, keys, backbone, ft.cache_for(backbone, tmp_path / "cache"), batch_size=4, chunk_size=4, progress=False)
    assert (first.embedded, first.cached) == (10, 0)
    again = ft.extract(paths, keys, backbone, ft.cache_for(backbone, tmp_path / "cache"), batch_size=4, progress=False)
    assert (again.embedded, again.cached) == (0, 10) and backbone.embedded == 10
    x = ft.cache_for(backbone, tmp_path / "cache").get(keys)
    np.testing.assert_allclose(x, backbone.embed(np.stack([backbone.prepare(np.asarray(Image.open(p))) for p in paths])), rtol=1e-6)


def test_grown_dataset_embeds_only_new_images(tmp_path):
    paths, keys = _images(tmp_path / "img", 6)
    backbone = ColourBackbone()
    ft.extract(paths, keys, backbone, ft.cache_for(backbone, tmp_path / "c"), progress=False)
    more_paths, more_keys = _images(tmp_path / "img", 3, start=6)
    report = ft.extract(paths + more_paths, keys + more_keys, backbone, ft.cache_for(backbone, tmp_path / "c"), progress=False)
    assert (report.cached, report.embedded) == (6, 3) and backbone.embedded == 9


def test_changed_image_is_embedded_again(tmp_path):
    paths, keys = _images(tmp_path / "img", 4)
    backbone = ColourBackbone()
    ft.extract(paths, keys, backbone, ft.cache_for(backbone, tmp_path / "c"), progress=False)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(paths[2])
    keys[2] = hashlib.sha256(paths[2].read_bytes()).hexdigest()
    report = ft.extract(paths, keys, backbone, ft.cache_for(backbone, tmp_path / "c"), progress=False)
    assert report.embedded == 1
    np.testing.assert_allclose(ft.cache_for(backbone, tmp_path / "c").get([keys[2]])[0], 0.0)


def test_cache_is_separate_per_backbone_id_and_refuses_mismatches(tmp_path):
    paths, keys = _images(tmp_path / "img", 3)
    v1, v2 = ColourBackbone(tag="v1"), ColourBackbone(tag="v2")
    ft.extract(paths, keys, v1, ft.cache_for(v1, tmp_path / "c"), progress=False)
    report = ft.extract(paths, keys, v2, ft.cache_for(v2, tmp_path / "c"), progress=False)
    assert report.embedded == 3  # other weights or preprocessing: nothing is reused
    with pytest.raises(ft.CacheMismatchError, match="colour-v1"):
        ft.extract(paths, keys, v2, ft.cache_for(v1, tmp_path / "c"), progress=False)
    with pytest.raises(ft.CacheMismatchError, match="no descriptors for backbone colour-v3"):
        ft.load_descriptors({"sha256": keys}, "colour-v3", 6, tmp_path / "c")


def test_undecodable_image_mid_batch_is_reported_and_the_rest_embedded(tmp_path):
    paths, keys = _images(tmp_path / "img", 7)
    paths[3].write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)  # cut after the signature
    backbone = ColourBackbone()
    report = ft.extract(paths, keys, backbone, ft.cache_for(backbone, tmp_path / "c"), batch_size=4, progress=False)
    assert report.embedded == 6 and [f["path"] for f in report.failures] == [str(paths[3])]
    assert "failed to decode" in report.failures[0]["reason"]
    cache = ft.cache_for(backbone, tmp_path / "c")
    assert cache.missing(keys) == [keys[3]]


def test_corrupt_chunk_is_set_aside_and_its_images_re_embedded(tmp_path):
    paths, keys = _images(tmp_path / "img", 8)
    backbone = ColourBackbone()
    cache = ft.cache_for(backbone, tmp_path / "c")
    ft.extract(paths, keys, backbone, cache, batch_size=4, chunk_size=4, progress=False)
    first = sorted(cache.dir.glob("chunk-*.npz"))[0]
    first.write_bytes(first.read_bytes()[:100])
    reopened = ft.cache_for(backbone, tmp_path / "c")
    assert len(reopened) == 4 and reopened.quarantined == [first.with_suffix(".corrupt")]
    report = ft.extract(paths, keys, backbone, reopened, progress=False)
    assert report.embedded == 4 and sorted(_chunk_keys(cache.dir)) == sorted(keys)


def test_run_killed_with_sigkill_resumes_and_embeds_each_image_exactly_once(tmp_path):
    paths, keys = _images(tmp_path / "img", 40)
    root = Path(__file__).resolve().parents[1]
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(root)!r})
        from pathlib import Path
        from gender_lib import features as ft
        from tests.fakes import ColourBackbone
        paths = sorted(Path({str(tmp_path / 'img')!r}).glob('*.png'))
        keys = {keys!r}
        b = ColourBackbone(delay=0.15)
        ft.extract(paths, keys, b, ft.cache_for(b, {str(tmp_path / 'c')!r}), batch_size=2, chunk_size=4, progress=False)
    """)
    process = subprocess.Popen([sys.executable, "-c", script])
    cache_dir = tmp_path / "c" / "colour-v1"
    deadline = time.time() + 60
    while len(list(cache_dir.glob("chunk-*.npz"))) < 3 and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done_before = len(_chunk_keys(cache_dir))
    assert 0 < done_before < 40, "the kill must land mid-run"
    backbone = ColourBackbone()
    report = ft.extract(paths, keys, backbone, ft.cache_for(backbone, tmp_path / "c"), batch_size=2, chunk_size=4, progress=False)
    stored = _chunk_keys(cache_dir)
    assert sorted(stored) == sorted(keys), "every image embedded exactly once"
    assert report.embedded == 40 - done_before == backbone.embedded
    assert not list(cache_dir.glob(".chunk-*")) and not list(cache_dir.glob("*.corrupt"))


def test_vggface_backbone_embeds_synthetic_model_fp32_and_bf16(tmp_path):
    from gender_lib import matconvnet as mc
    from gender_lib import vggface as vf

    vf.convert(mc.write_synthetic_mat(tmp_path / "v.mat"), tmp_path / "vggface.keras")
    fp32 = bb.get_backbone("vggface", vggface_path=tmp_path / "vggface.keras")
    bf16 = bb.get_backbone("vggface", vggface_path=tmp_path / "vggface.keras", precision="bfloat16")
    fc8 = bb.get_backbone("vggface", vggface_path=tmp_path / "vggface.keras", layer="fc8")
    assert fp32.id != bf16.id != fc8.id and fp32.dim == 16 and fc8.dim == 2622
    rgb = np.random.default_rng(0).integers(0, 256, (3, 100, 100, 3), dtype=np.uint8)
    batch = np.stack([fp32.prepare(image) for image in rgb])
    assert batch.shape == (3, 224, 224, 3)
    a, b = fp32.embed(batch), bf16.embed(batch)
    assert a.dtype == b.dtype == np.float32 and a.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    cosine = (a * b).sum(axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.99 and not np.array_equal(a, b)
    assert fp32.embed(batch[:1]).shape == (1, 16)  # a batch of one is still a batch


def test_auto_picks_dlib_without_a_converted_model(tmp_path):
    backbone = bb.get_backbone("auto", vggface_path=tmp_path / "none.keras", workers=1)
    assert backbone.name == "dlib" and backbone.id.startswith("dlib-resnet128-chip-")
    with pytest.raises(FileNotFoundError, match="no converted VGG-Face model"):
        bb.get_backbone("vggface", vggface_path=tmp_path / "none.keras")
    with pytest.raises(ValueError, match="unknown backbone"):
        bb.get_backbone("resnet")


@pytest.mark.realdata
def test_dlib_descriptors_of_the_same_person_are_closer_than_of_different_people(real_combined: Path):
    by_person: dict[str, list[Path]] = {}
    for path in sorted(real_combined.glob("*_M/nm*.jpg")) + sorted(real_combined.glob("*_F/nm*.jpg")):
        by_person.setdefault(path.name.split("_")[0], []).append(path)
    people = [files[:2] for files in by_person.values() if len(files) >= 2][:30]
    from gender_lib.dataset import load_rgb

    backbone = bb.get_backbone("dlib")
    try:
        chips = np.stack([backbone.prepare(load_rgb(p)) for pair in people for p in pair])
        x = backbone.embed(chips).reshape(len(people), 2, 128)
    finally:
        backbone.close()
    same = np.linalg.norm(x[:, 0] - x[:, 1], axis=1)
    different = np.linalg.norm(x[:, 0] - np.roll(x[:, 1], 1, axis=0), axis=1)
    assert len(people) == 30
    assert same.mean() < different.mean() - 0.1, (same.mean(), different.mean())
    assert (same < different).mean() > 0.7
