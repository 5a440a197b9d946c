"""Modes features and finetune: the level-2 output, the classifier's training, saving and loading,
and the stage that runs them, on the embedded sample's real faces (shrunk epochs)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import keras
import numpy as np
import pytest

from gender_lib import backbones, config, finetune, stages
from gender_lib.backbones import DlibBackbone
from gender_lib.errors import ConfigError
from gender_lib.images import load_rgb
from gender_lib.metrics import labels_from_genders

DESCRIPTOR_ID = "dlib-3c036b295fa0"  # the committed frozen head's backbone: the level2 output must not change it


@pytest.fixture(scope="module")
def chips(sample_faces_module: Path) -> np.ndarray:
    net = DlibBackbone()
    return np.stack([net.prepare(load_rgb(p)) for p in sorted(sample_faces_module.glob("*/*.jpg"))[::25]])


@pytest.fixture(scope="module")
def sample_faces_module() -> Path:
    return config.paths().sample


@pytest.fixture(scope="module")
def level2_work(tmp_path_factory: pytest.TempPathFactory) -> tuple[config.Config, object, np.ndarray]:
    """The sample's manifest and level-2 maps in a work folder: (config, table, x)."""
    work = tmp_path_factory.mktemp("level2")
    cfg = config.DEFAULT.replace(workdir=str(work), mode="finetune", epochs=8, finetune_epochs=1)
    stages.manifest(cfg, progress=False)
    stages.extract(cfg, progress=False)
    table, x, _, _ = stages.load_descriptors(cfg)
    return cfg, table, x


def _rows(table, split: str) -> np.ndarray:
    return (table["split"] == split).to_numpy()


def test_level2_output_has_its_own_id_and_leaves_the_descriptor_id_alone() -> None:
    level2 = DlibBackbone(output="level2")
    assert DlibBackbone().id == DESCRIPTOR_ID != level2.id
    assert level2.dim == 2 * 8 * 8 * 128 and "mirror" in level2.describe()["output"]
    assert backbones.from_description(level2.describe(), engine="dlib").id == level2.id  # rebuilt on the keras engine
    with pytest.raises(ConfigError, match="needs engine 'keras'"):
        DlibBackbone(output="level2", engine="dlib")
    with pytest.raises(ConfigError, match="needs backbone 'dlib'"):
        config.DEFAULT.replace(mode="finetune", backbone="vggface")


def test_level2_maps_through_the_frozen_top_give_the_descriptors_of_face_and_mirror(chips: np.ndarray) -> None:
    x = DlibBackbone(output="level2").embed(chips)
    descriptor = DlibBackbone()
    np.testing.assert_allclose(finetune.frozen_descriptors(x), descriptor.embed(chips), atol=1e-5)
    top = finetune.part(finetune.dlib_model(), finetune.LEVEL2_LAYER, None)
    mirrored = finetune.per_view(top, x)[:, 1]
    np.testing.assert_allclose(mirrored, descriptor.embed(chips[:, :, ::-1]), atol=1e-5)
    assert finetune.features_model(finetune.dlib_model()).output_shape == (None, finetune.FEATURES_DIM)


@pytest.mark.parametrize("mode, levels", [("features", 1), ("finetune", 1), ("finetune", 2)])
def test_a_saved_classifier_reloads_to_the_same_probabilities(level2_work, mode: str, levels: int, tmp_path: Path) -> None:
    cfg, table, x = level2_work
    y = labels_from_genders(table["gender"])
    tr, va = _rows(table, "train"), _rows(table, "val")
    head_config = dataclasses.replace(cfg.head, mode=mode, finetune_levels=levels)
    model, record = finetune.train(x[tr], y[tr], x[va], y[va], mode, head_config, progress=False)
    path = finetune.save(model, record, {"mode": mode, "flip_tta": True}, tmp_path / "c.npz")
    loaded, meta = finetune.load(path)
    np.testing.assert_allclose(np.asarray(loaded(x[va])), np.asarray(model(x[va])), atol=1e-6)
    stored = np.load(path)
    tuned = {k.split("/")[1] for k in stored.files if k.startswith("tuned/")}
    assert path.stat().st_size <= 12 * 2**20 and meta["weights_sha256"]
    if mode == "features" or not record["tuned_kept"]:
        assert not tuned  # nothing of dlib's changed: only the head is stored
        return
    assert "descriptor" in tuned and all(stored[k].dtype == np.float16 for k in stored.files if k.startswith("tuned/"))
    assert ("con_094" in tuned or "con_092" in tuned) == (levels == 2) and "con_119" in tuned


def test_tuned_levels_are_stored_in_float16_and_restored(level2_work, tmp_path: Path) -> None:
    """A fine-tuned level (here: changed by hand, as a kept epoch would) round-trips through the npz;
    the classifier evaluated before saving already carries the float16 rounding."""
    cfg, table, x = level2_work
    y = labels_from_genders(table["gender"])
    tr, va = _rows(table, "train"), _rows(table, "val")
    _, record = finetune.train(x[tr], y[tr], x[va], y[va], "finetune", cfg.head, progress=False)
    dlib = finetune.dlib_model()
    tuned = finetune.part(dlib, finetune.SPLIT_LAYERS[1], None, "tuned_levels")
    conv = tuned.get_layer("con_119")
    conv.set_weights([w * 1.5 for w in conv.get_weights()])
    for layer in tuned.layers:
        layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)  # as train() leaves them
    finetune.round_to_float16(tuned)
    trunk = finetune.chain(finetune.part(dlib, finetune.LEVEL2_LAYER, finetune.SPLIT_LAYERS[1]), tuned)
    changed = finetune.build_classifier(trunk, record["parts"]["head"])
    record = {**record, "parts": {**record["parts"], "tuned": tuned}, "tuned_kept": True}
    path = finetune.save(changed, record, {"mode": "finetune", "flip_tta": True}, tmp_path / "c.npz")
    loaded, meta = finetune.load(path)
    unchanged, _ = finetune.load(finetune.save(changed, {**record, "parts": {"head": record["parts"]["head"]}, "tuned_kept": False}, {}, tmp_path / "u.npz"))
    p_changed, p_loaded, p_unchanged = (np.asarray(m(x[va]))[:, 0] for m in (changed, loaded, unchanged))
    np.testing.assert_allclose(p_loaded, p_changed, atol=1e-6)
    assert np.abs(p_unchanged - p_changed).max() > 1e-3 and meta["tuned_kept"] is True
    assert "tuned/con_119/0" in np.load(path).files and "tuned/con_119/0" not in np.load(tmp_path / "u.npz").files
    assert finetune.numpy_flip_head(path) is None  # changed weights: only Keras computes it
    assert isinstance(finetune.numpy_flip_head(tmp_path / "u.npz"), finetune.NumpyFlipHead)


def test_the_shipped_model_predicts_without_tensorflow_and_equals_keras(chips: np.ndarray) -> None:
    """Its fine-tuning was discarded, so dlib's own engine (descriptors of face and mirror image) and
    the head in NumPy give the Keras classifier's P(female); a few photos never import TensorFlow."""
    import subprocess
    import sys

    from gender_lib import head as hd
    from gender_lib.predict import Predictor

    path = config.paths().default_head
    assert json.loads(path.with_suffix(".json").read_text())["tuned_kept"] is False
    fast = Predictor(path, engine="dlib")
    assert isinstance(fast.model, finetune.NumpyFlipHead) and fast.backbone.dim == 256
    keras_model, meta = finetune.load_any(path)
    level2 = backbones.from_description(meta["backbone"])
    p_keras = hd.predict_proba(keras_model, level2.embed(chips))
    np.testing.assert_allclose(hd.predict_proba(fast.model, fast.backbone.embed(chips)), p_keras, atol=1e-4)
    assert level2.dim == 2 * 8 * 8 * 128
    face = sorted(config.paths().sample.glob("*/*.jpg"))[0]
    code = (
        "import sys; from gender_lib import config, stages; "
        f"r = stages.predict(config.DEFAULT, [{str(face)!r}], detect=False); "
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'; print(r.rows[0]['label'])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() in ("M", "F")


def test_finetune_with_the_same_seed_gives_the_same_model(level2_work) -> None:
    cfg, table, x = level2_work
    y = labels_from_genders(table["gender"])
    tr, va = _rows(table, "train"), _rows(table, "val")
    runs = [finetune.train(x[tr], y[tr], x[va], y[va], "finetune", cfg.head, seed=3, progress=False) for _ in range(2)]
    np.testing.assert_array_equal(np.asarray(runs[0][0](x[va])), np.asarray(runs[1][0](x[va])))
    assert runs[0][1]["history"]["val_loss"] == runs[1][1]["history"]["val_loss"]


def test_a_changed_classifier_file_is_refused_with_its_name(level2_work, tmp_path: Path) -> None:
    cfg, table, x = level2_work
    y = labels_from_genders(table["gender"])
    tr, va = _rows(table, "train"), _rows(table, "val")
    model, record = finetune.train(x[tr], y[tr], x[va], y[va], "features", cfg.head, progress=False)
    path = finetune.save(model, record, {"mode": "features"}, tmp_path / "c.npz")
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(finetune.ClassifierError, match=r"c\.npz.*sha256"):
        finetune.load(path)
    path.with_suffix(".json").write_text("{}")
    with pytest.raises(finetune.ClassifierError, match="metadata missing or damaged"):
        finetune.load(path)
    with pytest.raises(finetune.ClassifierError, match=r"\.npz suffix"):
        finetune.save(model, record, {"mode": "features"}, tmp_path / "c.keras")


def test_train_stage_in_mode_finetune_extracts_trains_and_evaluate_reads_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """From a work folder extracted for mode frozen: the stage extracts the level-2 maps itself,
    saves classifier.npz, and evaluate and predict use it (the newest head of the folder)."""
    cfg = config.DEFAULT.replace(workdir=str(tmp_path), sample_size=120, epochs=8, finetune_epochs=1)
    stages.manifest(cfg, progress=False)
    stages.extract(cfg, progress=False)
    frozen = stages.train(cfg, progress=False)
    tuned = stages.train(cfg.replace(mode="finetune"), progress=False)
    assert tuned.path.name == "classifier.npz" and frozen.path.name == "head.keras"
    assert "mode finetune (top 1 residual level + fc " in tuned.summary() and "flip averaging on)" in tuned.summary()
    assert stages.workdir_head(tmp_path) == tuned.path and tuned.replaced == "head.keras (mode frozen)"
    os.utime(tmp_path / "head.keras")  # a newer file does not change which model is current: the record says
    assert stages.workdir_head(tmp_path) == tuned.path
    report = stages.evaluate(cfg)
    assert report.results["meta"]["head"] == "classifier.npz" and 0.0 <= report.head_report["accuracy"] <= 1.0
    assert json.loads((tmp_path / "extraction.json").read_text())["backbone"]["id"] == tuned.meta["backbone"]["id"]
    face = sorted(config.paths().sample.glob("*/*.jpg"))[0]
    predicted = stages.predict(cfg, [face], head=tuned.path, detect=False)
    assert predicted.exit_code == 0 and predicted.rows[0]["label"] in ("M", "F")
    with caplog.at_level("WARNING", logger="gender_lib.stages"):
        again = stages.train(cfg, progress=False)  # back to mode frozen: the descriptors are extracted again (from the cache)
    assert again.meta["descriptor_dim"] == 128 and again.meta["val_metrics"] == frozen.meta["val_metrics"]
    assert "extracting the descriptor output that mode frozen reads" in caplog.text  # said, not done behind the user's back
    assert again.replaced == "classifier.npz (mode finetune)"


def test_comparison_chooses_variant_and_winner_on_validation_only(level2_work, monkeypatch: pytest.MonkeyPatch) -> None:
    from experiments import comparison
    from gender_lib import metrics

    cfg, table, _ = level2_work
    test_rows = int(_rows(table, "test").sum())
    calls: list[str] = []
    real_evaluate = metrics.evaluate
    monkeypatch.setattr(metrics, "evaluate", lambda y, *a, **k: calls.append("test") or real_evaluate(y, *a, **k))
    monkeypatch.setattr(comparison, "inference_rate", lambda *a, **k: 1.0)
    methods = ["frozen descriptor (a)", "multi-level features (b)"]
    results = comparison.compare(cfg.replace(n_boot=20), methods=methods, folds=3, progress=False)
    rows = results["methods"]
    for row in rows.values():
        val = row["val"]
        assert row["chosen_variant"] == max(val, key=lambda v: (val[v]["accuracy"], -val[v]["log_loss"]))
        assert all(report["n"] == test_rows for report in row["test"].values())
    best = max(rows[m]["val"][rows[m]["chosen_variant"]]["accuracy"] for m in methods)
    assert rows[results["winner"]]["val"][results["winner_variant"]]["accuracy"] == best
    assert calls == ["test"] * 4  # two methods x two variants, scored once each after the choices
    cv = results["cross_validation"][comparison.BASELINE]
    assert len(cv["accuracy"]) == 3 and cv["mean"] == pytest.approx(np.mean(cv["accuracy"]))
    with pytest.raises(ConfigError, match="needs 3 to 5 folds"):
        comparison.cross_validate(comparison.BASELINE, "face", table, level2_work[2], labels_from_genders(table["gender"]), cfg, folds=2)
    table_md = (Path(cfg.paths.workdir) / "reports" / "methods.md").read_text()
    assert all(m in table_md for m in methods) and "(chosen on val)" in table_md


def test_train_stage_refuses_a_wrong_suffix_before_training(tmp_path: Path) -> None:
    cfg = config.DEFAULT.replace(workdir=str(tmp_path), mode="finetune")
    with pytest.raises(stages.StageError, match=r"mode finetune saves a \.npz file"):
        stages.train(cfg, output=tmp_path / "model.keras", progress=False)
