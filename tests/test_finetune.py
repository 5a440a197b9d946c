"""The level-2 model kinds (features, finetune), the level2 and descriptor+mirror outputs, saving and
loading through the one loader, and the stage that runs them, on the embedded sample's real faces
(shrunk epochs)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from gender_lib import backbones, config, modeling, stages
from gender_lib.backbones import DlibBackbone
from gender_lib.errors import ConfigError
from gender_lib.images import load_rgb
from gender_lib.metrics import labels_from_genders
from gender_lib.modeling import FeaturesHead, FinetunedNetwork, FrozenHead, HeadError, finetune

DESCRIPTOR_ID = "dlib-3c036b295fa0"  # the committed frozen head's backbone: the other outputs must not change it


@pytest.fixture(scope="module")
def chips() -> np.ndarray:
    net = DlibBackbone()
    return np.stack([net.prepare(load_rgb(p)) for p in sorted(config.paths().sample.glob("*/*.jpg"))[::25]])


@pytest.fixture(scope="module")
def level2_work(tmp_path_factory: pytest.TempPathFactory) -> tuple[config.Config, object, np.ndarray]:
    """The sample's manifest and level-2 maps in a work folder: (config, table, x)."""
    work = tmp_path_factory.mktemp("level2")
    cfg = config.DEFAULT.replace(workdir=str(work), mode="finetune", epochs=8, finetune_epochs=1, flip_tta=True)
    stages.manifest(cfg, progress=False)
    net = backbones.from_config(cfg, output="level2")
    stages.extract(cfg, progress=False, backbone=net)
    data = stages.load_descriptors(cfg, output="level2")
    return cfg, data.table, data.x


def _rows(table, split: str) -> np.ndarray:
    return (table["split"] == split).to_numpy()


def _fit(kind: type, level2_work, **changes) -> tuple[modeling.Estimator, np.ndarray]:
    cfg, table, x = level2_work
    y = labels_from_genders(table["gender"])
    tr, va = _rows(table, "train"), _rows(table, "val")
    seed = changes.pop("seed", 0)
    model = kind(dataclasses.replace(cfg.head, **changes), seed=seed)
    return model.fit(x[tr], y[tr], x[va], y[va], progress=False), x[va]


def test_other_outputs_have_their_own_ids_and_leave_the_descriptor_id_alone(chips: np.ndarray) -> None:
    level2, mirrored = DlibBackbone(output="level2"), DlibBackbone(output="descriptor+mirror", engine="dlib", workers=1)
    assert DlibBackbone().id == DESCRIPTOR_ID and len({DESCRIPTOR_ID, level2.id, mirrored.id}) == 3
    assert level2.dim == 2 * 8 * 8 * 128 and level2.describe()["output"] == "level2" and mirrored.dim == 256
    assert backbones.from_description(level2.describe(), engine="dlib").id == level2.id  # rebuilt on the keras engine
    face = DlibBackbone(engine="dlib", workers=1)
    np.testing.assert_array_equal(mirrored.embed(chips), np.concatenate([face.embed(chips), face.embed(chips[:, :, ::-1])], axis=1))
    with pytest.raises(ConfigError, match="needs engine 'keras'"):
        DlibBackbone(output="level2", engine="dlib")
    with pytest.raises(backbones.BackboneError, match="differ in .*weights_sha256"):  # another output of another network: refused
        backbones.from_description({**level2.describe(), "weights_sha256": "0" * 64}, output="descriptor")


def test_level2_maps_through_the_frozen_top_give_the_descriptors_of_face_and_mirror(chips: np.ndarray) -> None:
    x = DlibBackbone(output="level2").embed(chips)
    mirrored = DlibBackbone(output="descriptor+mirror").embed(chips)
    np.testing.assert_allclose(finetune.per_view(finetune.top_levels(), x).reshape(len(x), -1), mirrored, atol=1e-5)
    assert finetune.features_model(finetune.dlib_model()).output_shape == (None, finetune.FEATURES_DIM)


@pytest.mark.parametrize("kind, levels", [(FeaturesHead, 1), (FinetunedNetwork, 1), (FinetunedNetwork, 2)])
def test_a_saved_model_reloads_to_the_same_probabilities(level2_work, kind: type, levels: int, tmp_path: Path) -> None:
    model, x_val = _fit(kind, level2_work, finetune_levels=levels)
    assert model.input_kind == model.backbone_output == "level2" and 0 < model.threshold_ < 1
    if isinstance(model, FinetunedNetwork):
        model.tuned_kept_ = True  # save the tuned levels whatever the one epoch did, to test their round trip
    path = model.save(tmp_path / "c.npz", {"backbone": DlibBackbone(output="level2").describe()})
    loaded = modeling.load(path)
    assert type(loaded) is kind
    np.testing.assert_allclose(loaded.p_female(x_val), model.p_female(x_val), atol=1e-6)
    stored = np.load(path)
    tuned = {k.split("/")[1] for k in stored.files if k.startswith("tuned/")}
    assert path.stat().st_size <= 12 * 2**20 and loaded.meta_["weights_sha256"]
    if kind is FeaturesHead:
        assert not tuned  # nothing of dlib's changed: only the MLP is stored
        return
    assert "descriptor" in tuned and all(stored[k].dtype == np.float16 for k in stored.files if k.startswith("tuned/"))
    assert ("con_094" in tuned or "con_092" in tuned) == (levels == 2) and "con_119" in tuned


def test_tuned_levels_are_stored_in_float16_and_a_fine_tuning_that_kept_nothing_is_saved_as_a_head(level2_work, tmp_path: Path) -> None:
    model, x_val = _fit(FinetunedNetwork, level2_work)
    conv = model.tuned_.get_layer("con_119")
    conv.set_weights([w * 1.5 for w in conv.get_weights()])  # as a kept epoch would change it
    finetune.round_to_float16(model.tuned_)
    model.tuned_kept_ = True
    record = DlibBackbone(output="level2").describe()
    loaded = modeling.load(model.save(tmp_path / "c.npz", {"backbone": record}))
    np.testing.assert_allclose(loaded.p_female(x_val), model.p_female(x_val), atol=1e-6)
    model.tuned_kept_ = False
    head = modeling.load(model.save(tmp_path / "u.npz", {"backbone": record}))
    assert type(head) is FrozenHead and head.backbone_output == "descriptor+mirror" and "fine-tuned, no epoch kept" in head.meta_["fitted_as"]
    assert head.meta_["backbone"]["output"] == "descriptor+mirror" and backbones.same_network(head.meta_["backbone"], record)
    assert "tuned/con_119/0" in np.load(tmp_path / "c.npz").files and not any(k.startswith("tuned/") for k in np.load(tmp_path / "u.npz").files)
    assert np.abs(head.p_female(finetune.per_view(finetune.top_levels(), x_val).reshape(len(x_val), -1)) - loaded.p_female(x_val)).max() > 1e-3


def test_the_shipped_model_predicts_through_the_common_path_on_either_engine(chips: np.ndarray) -> None:
    """A head on the descriptors of face and mirror image: dlib's own engine and the Keras engine
    agree, and a few photos never import TensorFlow."""
    import subprocess
    import sys

    from gender_lib.predict import Predictor

    fast, keras_engine = Predictor(engine="dlib"), Predictor(engine="keras")
    assert type(fast.model) is FrozenHead and fast.model.flip and fast.backbone.dim == 256 and fast.backbone.engine == "dlib"
    p_fast = fast.model.p_female(fast.backbone.embed(chips))
    np.testing.assert_allclose(p_fast, keras_engine.model.p_female(keras_engine.backbone.embed(chips)), atol=1e-4)
    face = sorted(config.paths().sample.glob("*/*.jpg"))[0]
    code = (
        "import sys; from gender_lib import config, stages; "
        f"r = stages.predict(config.DEFAULT, [{str(face)!r}], detect=False); "
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'; print(r.rows[0]['label'])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() in ("M", "F", "uncertain")


def test_finetune_with_the_same_seed_gives_the_same_model(level2_work) -> None:
    runs = [_fit(FinetunedNetwork, level2_work, seed=3) for _ in range(2)]
    np.testing.assert_array_equal(runs[0][0].p_female(runs[0][1]), runs[1][0].p_female(runs[1][1]))
    assert runs[0][0].history_["val_loss"] == runs[1][0].history_["val_loss"]


def test_a_changed_model_file_is_refused_with_its_name(level2_work, tmp_path: Path) -> None:
    model, _ = _fit(FeaturesHead, level2_work)
    path = model.save(tmp_path / "c.npz", {"backbone": DlibBackbone(output="level2").describe()})
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(HeadError, match=r"c\.npz.*sha256"):
        modeling.load(path)


def test_train_stage_in_mode_finetune_extracts_trains_and_evaluate_reads_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """From a work folder extracted for the frozen head: the stage extracts the level-2 maps itself
    (and says so), saves model.npz and names it current; evaluate and predict read what it saved."""
    cfg = config.DEFAULT.replace(workdir=str(tmp_path), sample_size=120, epochs=8, finetune_epochs=1)
    stages.manifest(cfg, progress=False)
    stages.extract(cfg, progress=False)
    frozen = stages.train(cfg, progress=False)
    assert frozen.path.name == "model.npz" and frozen.model.kind == "frozen" and stages.current_model(tmp_path) == frozen.path
    with caplog.at_level("WARNING", logger="gender_lib.stages"):
        tuned = stages.train(cfg.replace(mode="finetune", flip_tta=True), output=tmp_path / "tuned.npz", progress=False)
    assert "extracting the level2 output" in caplog.text  # said, not done behind the user's back
    assert stages.current_model(tmp_path) == tuned.path and tuned.replaced == "model.npz (kind frozen)"
    assert "flip averaging on" in tuned.summary() and f"model: {tuned.model.kind} " in tuned.summary()
    assert sorted(stages.extraction_records(tmp_path)) == ["descriptor", "level2"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="gender_lib.stages"):
        report = stages.evaluate(cfg)
    assert report.results["meta"]["head"] == "tuned.npz" and 0.0 <= report.head_report["accuracy"] <= 1.0
    # What fine-tuning saved reads level-2 maps, or (no epoch kept) descriptors of face and mirror: extracted, and said.
    assert ("extracting the descriptor+mirror output" in caplog.text) == (tuned.model.backbone_output == "descriptor+mirror")
    face = sorted(config.paths().sample.glob("*/*.jpg"))[0]
    predicted = stages.predict(cfg, [face], head=tuned.path, detect=False)
    assert predicted.exit_code == 0 and predicted.rows[0]["forced_label"] in ("M", "F") and predicted.rows[0]["label"] in ("M", "F", "uncertain")
    again = stages.train(cfg, progress=False)  # back to the frozen head: its descriptors are still recorded, nothing extracted
    assert again.meta["val_metrics"] == frozen.meta["val_metrics"] and again.replaced == f"tuned.npz (kind {tuned.model.kind})"


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
    with pytest.raises(stages.StageError, match=r"model\.keras: a model is saved as \.npz"):
        stages.train(cfg, output=tmp_path / "model.keras", progress=False)
