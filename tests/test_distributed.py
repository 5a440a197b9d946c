"""Extraction on Ray (gender_lib.distributed) on a local 2-CPU Ray instance, with real faces.

About a minute on 2 cores: Ray's start-up is paid twice, once by extract_ray itself (start and
shut down) and once by the shared ``local_ray`` instance; every run starts its embedding actor,
which loads the converted dlib network on ONNX Runtime.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gender_lib import backbones as bb
from gender_lib import config as gl_config
from gender_lib import distributed
from gender_lib import features as ft
from gender_lib.errors import GenderLibError

N_FACES = 200

# Ray Data's own DataContext sets deprecated fields of its own when it copies itself
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")


def _faces(sample: Path, n: int) -> tuple[list[Path], list[str]]:
    paths = sorted(sample.glob("*/*.jpg"))
    assert len(paths) >= n, f"{sample} holds {len(paths)} faces, fewer than {n}"
    paths = [paths[int(i)] for i in np.linspace(0, len(paths) - 1, n).round()]  # every age/gender folder
    return paths, [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]


def _chunk_keys(cache_dir: Path) -> list[str]:
    keys: list[str] = []
    for chunk in sorted(cache_dir.glob("chunk-*.npz")):
        with np.load(chunk) as data:
            keys.extend(data["keys"].tolist())
    return keys


def _embed_actor_pids() -> list[int]:
    """Processes of this machine running the embedding actor (Ray titles them ``ray::MapWorker(MapBatches(_Embed))...``)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                title = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"MapBatches(_Embed)" in title:
                pids.append(int(proc.name))
    return sorted(pids)


@pytest.fixture(scope="module")
def dlib() -> bb.DlibBackbone:
    """The real dlib backbone; its converted network lives in the test run's store."""
    return bb.DlibBackbone(align="chip")


@pytest.fixture(scope="module")
def both_engines(dlib, tmp_path_factory):
    """The same real faces (of data/sample, as the ``sample_faces`` fixture gives them; module-scoped
    here, as the runs are shared) embedded here and by extract_ray (which starts and shuts down its
    own local Ray)."""
    ray = pytest.importorskip("ray")
    sample = gl_config.paths().sample
    if not sample.is_dir():
        pytest.fail(f"{sample} is missing: it is part of the repository")
    paths, keys = _faces(sample, N_FACES)
    root = tmp_path_factory.mktemp("engines")
    single_cache = ft.cache_for(dlib, root / "single")
    single = ft.extract(paths, keys, dlib, single_cache, progress=False)
    running_before = ray.is_initialized()
    ray_cache = ft.cache_for(dlib, root / "ray")
    report = distributed.extract_ray(paths, keys, dlib.describe(), ray_cache, num_cpus=2, progress=False)
    return {
        "paths": paths,
        "keys": keys,
        "single": single,
        "single_cache": single_cache,
        "report": report,
        "ray_cache": ray_cache,
        "shut_down": running_before or not ray.is_initialized(),
    }


@pytest.fixture(scope="module")
def local_ray():
    """One local 2-CPU Ray instance for the tests below; extract_ray joins it and leaves it running."""
    ray = pytest.importorskip("ray")
    import logging

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield ray
    if started:
        ray.shutdown()


# --------------------------------------------------------------------------- without Ray


def test_importing_the_module_does_not_import_ray():
    code = "import sys, gender_lib.distributed; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("missing", ["ray", "ray.data"])
def test_without_ray_a_one_line_error_names_the_extra(tmp_path, missing, monkeypatch):
    paths = [tmp_path / "a.jpg"]
    paths[0].write_bytes(b"not used")
    cache = ft.DescriptorCache(tmp_path / "cache", "dlib-0123456789ab", 128)
    if missing == "ray.data":
        pytest.importorskip("ray")
    monkeypatch.setitem(sys.modules, missing, None)
    with pytest.raises(GenderLibError) as caught:
        distributed.extract_ray(paths, ["k" * 64], {"name": "dlib", "id": "dlib-0123456789ab", "dim": 128}, cache, progress=False)
    message = str(caught.value)
    assert isinstance(caught.value, distributed.RayNotInstalledError) and isinstance(caught.value, ImportError)
    assert "\n" not in message and "pip install -e '.[distributed]'" in message, message


# --------------------------------------------------------------------------- with a local Ray


@pytest.mark.ray
def test_ray_descriptors_equal_the_single_machine_ones(both_engines):
    keys, report = both_engines["keys"], both_engines["report"]
    assert (report.requested, report.cached, report.embedded, report.failures) == (N_FACES, 0, N_FACES, [])
    assert both_engines["single"].embedded == N_FACES
    x_ray, x_single = both_engines["ray_cache"].get(keys), both_engines["single_cache"].get(keys)
    assert x_ray.shape == (N_FACES, 128) and np.isfinite(x_ray).all()
    assert np.abs(x_ray - x_single).max() <= 1e-5
    stored = _chunk_keys(both_engines["ray_cache"].dir)
    assert sorted(stored) == sorted(keys), "each image stored exactly once"
    assert both_engines["shut_down"], "extract_ray left running the Ray instance it started"
    # the same cache layout: a fresh reader (as the head and the evaluation open it) finds every descriptor
    fresh = ft.DescriptorCache(both_engines["ray_cache"].dir.parent, both_engines["ray_cache"].backbone_id, 128)
    np.testing.assert_array_equal(fresh.get(keys), x_ray)


@pytest.mark.ray
def test_a_rerun_schedules_no_work(both_engines, dlib, monkeypatch):
    paths, keys = both_engines["paths"], both_engines["keys"]

    def no_ray():
        raise AssertionError("a rerun over cached images must not even import Ray")

    monkeypatch.setattr(distributed, "_import_ray", no_ray)
    reopened = ft.cache_for(dlib, both_engines["ray_cache"].dir.parent)
    before = sorted(reopened.dir.glob("chunk-*.npz"))
    # the images again, in another order and with repeats
    report = distributed.extract_ray(paths[::-1] + paths[:10], keys[::-1] + keys[:10], dlib.describe(), reopened, progress=False)
    assert (report.requested, report.cached, report.embedded, report.failures) == (N_FACES, N_FACES, 0, [])
    assert sorted(reopened.dir.glob("chunk-*.npz")) == before


@pytest.mark.ray
def test_a_killed_actor_is_restarted_and_every_image_embedded_once(local_ray, both_engines, dlib, tmp_path):
    """SIGKILL the embedding actor as soon as its first descriptors reach the driver: Ray restarts
    it and retries its batches; every image still ends with exactly one (correct) descriptor."""
    paths, keys = both_engines["paths"][:120], both_engines["keys"][:120]
    events = {"killed": None, "added_after_kill": 0, "pids_after_kill": set()}

    class KillingCache(ft.DescriptorCache):
        def add(self, keys_, vectors):
            pids = _embed_actor_pids()
            if events["killed"] is None:
                assert pids, "no embedding actor process found"
                os.kill(pids[0], signal.SIGKILL)
                events["killed"] = pids[0]
            else:
                events["added_after_kill"] += len(keys_)
                events["pids_after_kill"].update(pids)
            return super().add(keys_, vectors)

    cache = KillingCache(tmp_path / "cache", dlib.id, dlib.dim, dlib.describe())
    report = distributed.extract_ray(paths, keys, dlib.describe(), cache, batch_size=16, chunk_size=16, progress=False)
    assert events["killed"] is not None and events["added_after_kill"] > 0, events
    assert events["pids_after_kill"] - {events["killed"]}, f"no restarted actor seen: {events}"
    assert (report.embedded, report.failures) == (120, [])
    stored = _chunk_keys(cache.dir)
    assert len(stored) == len(set(stored)) == 120 and set(stored) == set(keys)
    assert np.abs(cache.get(keys) - both_engines["single_cache"].get(keys)).max() <= 1e-5
    assert local_ray.is_initialized(), "extract_ray must not shut down an instance it did not start"


@pytest.mark.ray
def test_a_corrupt_image_is_reported_and_the_rest_kept(local_ray, both_engines, dlib, tmp_path, monkeypatch):
    """As in the single-machine engine: the bad files are failures with path/reason/detail, the good
    ones are embedded; cached images and repeats are dropped before scheduling."""
    good = both_engines["paths"][:6]
    folder = tmp_path / "img"
    folder.mkdir()
    corrupt = folder / "corrupt.jpg"
    corrupt.write_bytes(b"this is not a JPEG at all")
    truncated = folder / "truncated.jpg"
    truncated.write_bytes(good[0].read_bytes()[:600])
    paths = [*good[:3], corrupt, *good[3:], truncated, good[1]]
    keys = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]

    single = ft.extract(paths, keys, dlib, ft.cache_for(dlib, tmp_path / "single"), progress=False)
    cache = ft.cache_for(dlib, tmp_path / "ray")
    cache.add(keys[:2], both_engines["single_cache"].get(keys[:2]))  # two already cached
    scheduled = []
    from_items = local_ray.data.from_items

    def spy(items, **kwargs):
        scheduled.extend(item["key"] for item in items)
        return from_items(items, **kwargs)

    monkeypatch.setattr(local_ray.data, "from_items", spy)
    report = distributed.extract_ray(paths, keys, dlib.describe(), cache, progress=False)
    assert sorted(scheduled) == sorted(set(keys[2:8])), "only uncached images, once each, are scheduled"
    assert (report.requested, report.cached, report.embedded) == (8, 2, 4)

    def comparable(failures):  # PIL names the BytesIO it read from, by address
        return sorted(({**f, "detail": re.sub(r"0x[0-9a-f]+", "0x?", f["detail"])} for f in failures), key=lambda f: f["path"])

    assert comparable(report.failures) == comparable(single.failures)
    assert {f["path"] for f in report.failures} == {str(corrupt), str(truncated)}
    assert all(f["reason"] == "failed to decode at extraction" and f["detail"] for f in report.failures)
    good_keys = [k for p, k in zip(paths, keys) if p not in (corrupt, truncated)]
    assert np.abs(cache.get(good_keys) - both_engines["single_cache"].get(good_keys)).max() <= 1e-5
    assert cache.missing(keys) == [keys[3], keys[7]]


@pytest.mark.ray
def test_the_extract_stage_on_ray_fills_the_same_cache(sample_faces, tmp_path):
    """`gender-lib extract --ray-address local` (the stage API): same manifest, same descriptors as extraction here."""
    from gender_lib import config, stages

    base = dict(sample_size=40, cache_dir=str(tmp_path / "cache"))
    local = config.DEFAULT.replace(base, workdir=str(tmp_path / "local"))
    ray_cfg = config.DEFAULT.replace(base, workdir=str(tmp_path / "ray"), cache_dir=str(tmp_path / "ray_cache"), ray_address="local")
    for cfg in (local, ray_cfg):
        stages.manifest(cfg, progress=False)
    stages.extract(local, progress=False)
    result = stages.extract(ray_cfg, progress=False)
    assert result.report.embedded == result.n_images > 0
    here, there = stages.load_descriptors(local), stages.load_descriptors(ray_cfg)
    assert there.record["backbone"]["id"] == here.record["backbone"]["id"]
    np.testing.assert_allclose(there.x, here.x, atol=1e-5)
