"""Backbones, streaming extraction and the descriptor cache (hits, invalidation, growth, kills, bad images, concurrency)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
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
from tests.mat_files import write_synthetic_mat


def _images(folder: Path, n: int, start: int = 0) -> tuple[list[Path], list[str]]:
    folder.mkdir(parents=True, exist_ok=True)
    paths, keys = [], []
    for i in range(start, start + n):
        rgb = np.random.default_rng(i).integers(0, 256, (40, 40, 3), dtype=np.uint8)
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
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(paths[2])
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
        ft.open_cache("colour-v3", 6, tmp_path / "c")


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
        paths = sorted(Path({str(tmp_path / "img")!r}).glob('*.png'))
        keys = {keys!r}
        b = ColourBackbone(delay=0.15)
        ft.extract(paths, keys, b, ft.cache_for(b, {str(tmp_path / "c")!r}), batch_size=2, chunk_size=4, progress=False)
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


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_opening_a_cache_removes_only_temp_files_of_writers_that_are_gone(tmp_path):
    paths, keys = _images(tmp_path / "img", 2)
    backbone = ColourBackbone()
    cache = ft.cache_for(backbone, tmp_path / "c")
    ft.extract(paths, keys, backbone, cache, progress=False)
    host = ft._HOST
    live = cache.dir / f".chunk-1-a.npz.{host}.{os.getpid()}.tmp"  # a writer still running (this process)
    dead = cache.dir / f".chunk-2-b.npz.{host}.{_dead_pid()}.tmp"  # its writer exited without renaming
    elsewhere = cache.dir / f".chunk-3-c.npz.other-host.{_dead_pid()}.tmp"  # pid means nothing here
    legacy = cache.dir / ".chunk-4-d.npz.k2j4h1.npz"  # an older version's name: no pid
    old = cache.dir / f".chunk-5-e.npz.other-host.{os.getpid()}.tmp"
    old_legacy = cache.dir / ".chunk-6-f.npz.x8y7z6.npz"
    for temp in (live, dead, elsewhere, legacy, old, old_legacy):
        temp.write_bytes(b"partial")
    hours_ago = time.time() - 2 * 3600
    for temp in (old, old_legacy):
        os.utime(temp, (hours_ago, hours_ago))
    reopened = ft.cache_for(backbone, tmp_path / "c")
    assert sorted(p.name for p in cache.dir.glob(".chunk-*")) == sorted(p.name for p in (live, elsewhere, legacy))
    assert len(reopened) == 2


def test_a_writer_whose_temp_file_vanishes_writes_its_chunk_again(tmp_path, monkeypatch, caplog):
    backbone = ColourBackbone()
    cache = ft.cache_for(backbone, tmp_path / "c")
    real_replace, calls = os.replace, []

    def replace_after_a_reader_deleted_the_temp(src, dst):
        if Path(src).name.startswith(".chunk-"):
            calls.append(src)
            if len(calls) == 1:
                os.unlink(src)
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_after_a_reader_deleted_the_temp)
    with caplog.at_level(logging.WARNING, logger="gender_lib.features"):
        path = cache.add(["k1", "k2"], np.arange(12, dtype=np.float32).reshape(2, 6))
    monkeypatch.undo()
    assert len(calls) == 2 and path.is_file() and "vanished" in caplog.text
    np.testing.assert_array_equal(ft.cache_for(backbone, tmp_path / "c").get(["k2", "k1"])[0], np.arange(6, 12))


def test_a_cache_opened_earlier_sees_chunks_added_later_by_another_writer(tmp_path):
    backbone = ColourBackbone()
    reader = ft.cache_for(backbone, tmp_path / "c")  # opened before anything exists
    writer = ft.cache_for(backbone, tmp_path / "c")
    first = np.ones((2, 6), np.float32)
    writer.add(["a", "b"], first)
    np.testing.assert_array_equal(reader.get(["b", "a"]), first)  # get refreshes once on missing keys
    writer.add(["c"], np.full((1, 6), 3, np.float32))
    assert "c" not in reader and reader.refresh() == 1 and "c" in reader and len(reader) == 3
    assert reader.refresh() == 0
    with pytest.raises(ft.MissingDescriptorsError, match="1 images have no colour-v1 descriptors"):
        reader.get(["a", "d"])
    assert reader.add(["c"], np.zeros((1, 6), np.float32)) is None  # already stored by the other writer
    with pytest.raises(ft.CacheMismatchError, match=r"holds descriptors of colour-v1 \(6-d\)"):
        ft.DescriptorCache(tmp_path / "c", "colour-v1", 5)


_CONCURRENT_WRITER = """
import json, sys, time; sys.path.insert(0, {root!r})
from pathlib import Path
import numpy as np
from gender_lib import features as ft
from tests.fakes import ColourBackbone
savez = np.savez
def slow_disk_savez(*args, **kwargs):  # a temp file lives long enough for a reader to meet it
    savez(*args, **kwargs)
    time.sleep(0.02)
np.savez = slow_disk_savez
spec = json.loads(Path({spec!r}).read_text())
part = spec[sys.argv[1]]
b = ColourBackbone(delay=0.005)
ft.extract([Path(p) for p in part["paths"]], part["keys"], b, ft.cache_for(b, spec["root"]),
           batch_size=1, chunk_size=1, prefetch=1, progress=False)
"""

_CONCURRENT_READER = """
import json, sys; sys.path.insert(0, {root!r})
from pathlib import Path
import numpy as np
from gender_lib import features as ft
from gender_lib.images import load_rgb
from tests.fakes import ColourBackbone
spec = json.loads(Path({spec!r}).read_text())
keys, b = spec["all"]["keys"], ColourBackbone()
expected = dict(zip(keys, b.embed(np.stack([b.prepare(load_rgb(p)) for p in spec["all"]["paths"]]))))
refreshed = ft.DescriptorCache(spec["root"], b.id, b.dim)  # opened before any chunk exists
untouched = ft.DescriptorCache(spec["root"], b.id, b.dim)  # only ever asked through get()
print("ready", flush=True)
reads, seen = 0, 0
while not Path(spec["done"]).exists():
    fresh = ft.DescriptorCache(spec["root"], b.id, b.dim)
    have = [k for k in keys if k in fresh]
    if have:
        np.testing.assert_allclose(fresh.get(have), np.stack([expected[k] for k in have]), rtol=1e-6)
    refreshed.refresh()
    assert len(refreshed) >= seen and len(refreshed) >= len(have), (len(refreshed), seen, len(have))
    seen = len(refreshed)
    reads += 1
np.testing.assert_allclose(untouched.get(keys), np.stack([expected[k] for k in keys]), rtol=1e-6)
print("reads", reads, flush=True)
"""


def test_two_writers_and_a_reader_share_one_cache_safely(tmp_path):
    paths, keys = _images(tmp_path / "img", 40)
    root = str(Path(__file__).resolve().parents[1])
    spec = {
        "root": str(tmp_path / "c"),
        "done": str(tmp_path / "done"),
        "all": {"paths": [str(p) for p in paths], "keys": keys},
        "a": {"paths": [str(p) for p in paths[:28]], "keys": keys[:28]},  # overlapping halves, opposite orders
        "b": {"paths": [str(p) for p in paths[12:]][::-1], "keys": keys[12:][::-1]},
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    code = {"root": root, "spec": str(tmp_path / "spec.json")}
    reader = subprocess.Popen([sys.executable, "-c", _CONCURRENT_READER.format(**code)], stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "ready"
        writers = [subprocess.Popen([sys.executable, "-c", _CONCURRENT_WRITER.format(**code), part], stderr=subprocess.PIPE, text=True) for part in ("a", "b")]
        errors = [w.communicate(timeout=120)[1] for w in writers]
        assert [w.returncode for w in writers] == [0, 0], f"a writer crashed: {errors}"
        assert not any("vanished" in e for e in errors), f"a live writer's temp file was removed: {errors}"
        (tmp_path / "done").touch()
        out, _ = reader.communicate(timeout=120)
    finally:
        reader.kill()
    assert reader.returncode == 0, "the reader crashed"
    assert int(out.split()[-1]) >= 1
    backbone = ColourBackbone()
    cache = ft.cache_for(backbone, tmp_path / "c")
    assert cache.missing(keys) == [] and set(_chunk_keys(cache.dir)) == set(keys)
    expected = backbone.embed(np.stack([backbone.prepare(np.asarray(Image.open(p))) for p in paths]))
    np.testing.assert_allclose(cache.get(keys), expected, rtol=1e-6)
    assert not list(cache.dir.glob(".chunk-*")) and not list(cache.dir.glob("*.corrupt"))


def test_slow_extraction_killed_with_sigkill_loses_at_most_one_flush_interval(tmp_path):
    paths, keys = _images(tmp_path / "img", 60)
    root = Path(__file__).resolve().parents[1]
    progress_log = tmp_path / "embedded.log"
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(root)!r})
        from pathlib import Path
        from gender_lib import features as ft
        from tests.fakes import ColourBackbone

        class Logged(ColourBackbone):
            def embed(self, batch):
                out = super().embed(batch)  # sleeps 0.1 s: at most 4 batches fit in a 0.35 s interval
                with open({str(progress_log)!r}, "a") as log:
                    log.write(f"{{len(batch)}}\\n")
                return out

        paths = sorted(Path({str(tmp_path / "img")!r}).glob('*.png'))
        b = Logged(delay=0.1)
        ft.extract(paths, {keys!r}, b, ft.cache_for(b, {str(tmp_path / "c")!r}), batch_size=2, chunk_size=256,
                   flush_seconds=0.35, progress=False)
    """)

    def embedded() -> int:
        lines = progress_log.read_text().split() if progress_log.exists() else []
        return sum(int(n) for n in lines if n.isdigit())

    process = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 60
    while embedded() < 24 and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    cache_dir = tmp_path / "c" / "colour-v1"
    done, stored = embedded(), _chunk_keys(cache_dir)
    assert 24 <= done < 60, "the kill must land mid-run"
    assert len(stored) >= done - 8, f"{done} embedded but only {len(stored)} stored: more than one interval lost"
    chunk_sizes = [len(np.load(c)["keys"]) for c in cache_dir.glob("chunk-*.npz")]
    assert max(chunk_sizes) <= 8  # stored by time, long before chunk_size
    backbone = ColourBackbone()
    report = ft.extract(paths, keys, backbone, ft.cache_for(backbone, tmp_path / "c"), progress=False)
    assert sorted(_chunk_keys(cache_dir)) == sorted(keys) and report.embedded == 60 - len(stored)
    with pytest.raises(ValueError, match="flush_seconds"):
        ft.extract(paths, keys, backbone, ft.cache_for(backbone, tmp_path / "c"), flush_seconds=-1, progress=False)


def test_quarantine_is_logged_not_printed(tmp_path, capsys, caplog):
    backbone = ColourBackbone()
    cache = ft.cache_for(backbone, tmp_path / "c")
    chunk = cache.add(["a"], np.zeros((1, 6), np.float32))
    chunk.write_bytes(b"not a zip")
    with caplog.at_level(logging.WARNING, logger="gender_lib.features"):
        assert len(ft.cache_for(backbone, tmp_path / "c")) == 0
    assert capsys.readouterr().out == ""
    assert [r.levelname for r in caplog.records] == ["WARNING"] and "unreadable" in caplog.records[0].getMessage()


def test_cache_errors_are_user_errors(tmp_path):
    from gender_lib.errors import GenderLibError

    assert issubclass(ft.CacheMismatchError, GenderLibError) and issubclass(ft.CacheMismatchError, ValueError)
    assert issubclass(ft.MissingDescriptorsError, GenderLibError) and issubclass(ft.MissingDescriptorsError, KeyError)
    with pytest.raises(GenderLibError, match="^1 images have no colour-v1 descriptors"):
        ft.cache_for(ColourBackbone(), tmp_path / "c").get(["a"])


def test_vggface_backbone_embeds_with_its_converted_graph(tmp_path):
    from gender_lib.converters import matconvnet as mc
    from gender_lib.converters import vggface as vf

    vf.convert(write_synthetic_mat(tmp_path / "v.mat"), tmp_path / "vggface.onnx")
    fc7 = bb.get_backbone("vggface", vggface_path=tmp_path / "vggface.onnx")
    fc8 = bb.get_backbone("vggface", vggface_path=tmp_path / "vggface.onnx", layer="fc8")
    mirrored = bb.get_backbone("vggface", vggface_path=tmp_path / "vggface.onnx", output="descriptor+mirror")
    assert len({fc7.id, fc8.id, mirrored.id}) == 3 and (fc7.dim, fc8.dim, mirrored.dim) == (16, 2622, 32)
    rgb = np.random.default_rng(0).integers(0, 256, (3, 100, 100, 3), dtype=np.uint8)
    batch = np.stack([fc7.prepare(image) for image in rgb])
    assert batch.shape == (3, 224, 224, 3)
    a = fc7.embed(batch)
    assert a.dtype == np.float32 and a.shape == (3, 16) and fc8.embed(batch).shape == (3, 2622)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(a, vf.reference_forward(mc.read_network(tmp_path / "v.mat"), batch)["fc7"], atol=1e-5)
    np.testing.assert_allclose(mirrored.embed(batch), np.hstack([a, fc7.embed(np.ascontiguousarray(batch[:, :, ::-1]))]), atol=1e-6)
    assert fc7.embed(batch[:1]).shape == (1, 16)  # a batch of one is still a batch
    assert bb.from_description(fc7.describe(), tmp_path / "vggface.onnx").id == fc7.id


def test_auto_picks_dlib_without_a_converted_model(tmp_path):
    backbone = bb.get_backbone("auto", vggface_path=tmp_path / "none.onnx")
    assert backbone.name == "dlib" and re.fullmatch(r"dlib-[0-9a-f]{12}", backbone.id)  # backbones.backbone_id
    with pytest.raises(FileNotFoundError, match="no converted VGG-Face model"):
        bb.get_backbone("vggface", vggface_path=tmp_path / "none.onnx")
    with pytest.raises(ValueError, match="unknown backbone"):
        bb.get_backbone("resnet")


@pytest.mark.realdata
def test_dlib_descriptors_of_the_same_person_are_closer_than_of_different_people(real_combined: Path):
    by_person: dict[str, list[Path]] = {}
    for path in sorted(real_combined.glob("*_M/nm*.jpg")) + sorted(real_combined.glob("*_F/nm*.jpg")):
        by_person.setdefault(path.name.split("_")[0], []).append(path)
    people = [files[:2] for files in by_person.values() if len(files) >= 2][:30]
    from gender_lib.images import load_rgb

    backbone = bb.get_backbone("dlib")
    chips = np.stack([backbone.prepare(load_rgb(p)) for pair in people for p in pair])
    x = backbone.embed(chips).reshape(len(people), 2, 128)
    same = np.linalg.norm(x[:, 0] - x[:, 1], axis=1)
    different = np.linalg.norm(x[:, 0] - np.roll(x[:, 1], 1, axis=0), axis=1)
    assert len(people) == 30
    assert same.mean() < different.mean() - 0.1, (same.mean(), different.mean())
    assert (same < different).mean() > 0.7


def test_a_files_hash_is_kept_for_later_processes_and_redone_when_the_file_changes(tmp_path, monkeypatch):
    from gender_lib import fileio

    monkeypatch.setenv("GENDER_LIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fileio, "_HASHES", {})
    memo_path = tmp_path / "cache" / fileio.HASH_MEMO
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"a" * 1000)
    assert fileio.sha256_file_cached(weights) == fileio.sha256_file(weights)
    assert not memo_path.exists()  # just written: it may change again within one clock tick, so it is not remembered
    monkeypatch.setattr(fileio, "RACY_SECONDS", 0.0)  # as if written long ago
    assert fileio.sha256_file_cached(weights) == fileio.sha256_file(weights)
    memo = json.loads(memo_path.read_text())
    assert memo[str(weights.resolve())][-1] == fileio.sha256_file(weights)
    # a later process (an empty in-process memo) reads it from the memo, without hashing
    monkeypatch.setattr(fileio, "_HASHES", {})
    real_hash = fileio.sha256_file
    monkeypatch.setattr(fileio, "sha256_file", lambda path: "computed again")
    assert fileio.sha256_file_cached(weights) == memo[str(weights.resolve())][-1]
    weights.write_bytes(b"b" * 1001)  # changed: a new stamp, hashed again
    assert fileio.sha256_file_cached(weights) == "computed again"
    monkeypatch.setattr(fileio, "sha256_file", real_hash)
    gone = tmp_path / "gone.bin"
    gone.write_bytes(b"c" * 10)
    assert fileio.sha256_file_cached(gone) == fileio.sha256_file(gone)
    gone.unlink()
    weights.write_bytes(b"d" * 1002)
    fileio.sha256_file_cached(weights)
    assert str(gone.resolve()) not in json.loads(memo_path.read_text())  # files since removed leave the memo
    memo_path.write_text("{broken")
    monkeypatch.setattr(fileio, "_HASHES", {})
    assert fileio.sha256_file_cached(weights) == fileio.sha256_file(weights)  # a damaged memo costs only the time


def test_prepared_batches_keep_the_order_report_failures_in_place_and_stop_at_once(tmp_path):
    paths, keys = _images(tmp_path / "img", 12)
    paths[4].write_bytes(b"not an image")
    backbone = ColourBackbone(delay=0.0)
    failures: list[dict] = []
    batches = list(ft._batches(list(zip(paths, keys)), backbone, 5, failures, workers=2, ahead=2))
    assert [k for ks, _ in batches for k in ks] == keys[:4] + keys[5:] and [len(ks) for ks, _ in batches] == [4, 5, 2]
    assert [f["path"] for f in failures] == [str(paths[4])]

    class Slow(ColourBackbone):
        def prepare(self, rgb):
            time.sleep(0.2)
            return super().prepare(rgb)

    many, many_keys = _images(tmp_path / "many", 60)
    started = time.perf_counter()
    for _ in ft._batches(list(zip(many, many_keys)), Slow(), 4, [], workers=2, ahead=2):
        break  # the caller stops (an error, Ctrl-C): what was queued ahead is dropped, not waited for
    assert time.perf_counter() - started < 2.0
