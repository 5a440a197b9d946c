"""The committed notebooks' compared outputs do not depend on the machine that made them.

Another CPU computes the backbone's float32 arithmetic in another order (ONNX Runtime picks its
kernels by instruction set; thread counts split sums differently), so its descriptors differ from
ours by about 1e-7 to 1e-6 relative. Trained in float32, the sample's head turned that into another
early-stopping path (best epoch 100 of 100 vs 89 of 97, threshold 0.641 vs 0.666). This test
simulates such a machine on a copy of the test run's chain (:func:`tests.conftest.chain_work`) and
requires ``pytest --nbval`` to pass on the committed 03-05 unchanged:

* the chain's cached descriptors are multiplied by ``1 + 1e-6 * N(0, 1)`` (seeded);
* notebooks 03-05 run with that cache on one core, with TensorFlow and BLAS on one thread.

(Notebook 02's compared outputs are counts and a mean norm to 3 decimals: ONNX Runtime's descriptors
were bit-identical on one thread or two and at any batch size, as measured here.)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.notebook_checks import nbval

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
#: What another CPU changes: oneDNN's instruction set and the thread counts of TensorFlow and BLAS.
OTHER_MACHINE = {
    "ONEDNN_MAX_CPU_ISA": "SSE41",
    "TF_NUM_INTRAOP_THREADS": "1",
    "TF_NUM_INTEROP_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
}
RELATIVE_NOISE = 1e-6


def perturb_cache(cache: Path, relative: float, seed: int) -> int:
    """Multiply every cached descriptor by ``1 + relative * N(0, 1)`` in place; returns how many."""
    rng = np.random.default_rng(seed)
    count = 0
    for chunk in sorted(cache.rglob("chunk-*.npz")):
        with np.load(chunk) as data:
            keys, x = data["keys"], data["x"]
        noisy = (x.astype(np.float64) * (1 + relative * rng.standard_normal(x.shape))).astype(np.float32)
        if np.array_equal(noisy, x):
            raise AssertionError(f"{chunk}: the perturbation changed nothing")
        with open(chunk, "wb") as handle:
            np.savez(handle, keys=keys, x=noisy)
        count += len(x)
    return count


def copy_chain(chain_work: Path, to: Path) -> tuple[Path, Path]:
    """(work folder, store) copies of the chain's, descriptors only in the store."""
    shutil.copytree(chain_work, to / "work")
    store = Path(os.environ["GENDER_LIB_CACHE"])
    for part in store.glob("dlib-*"):
        shutil.copytree(part, to / "cache" / part.name)
    return to / "work", to / "cache"


@pytest.mark.notebooks
def test_committed_notebooks_03_to_05_pass_nbval_on_a_simulated_other_machine(chain_work, tmp_path):
    work, cache = copy_chain(chain_work, tmp_path)
    assert perturb_cache(cache, RELATIVE_NOISE, seed=1) >= 280
    env = {**os.environ, **OTHER_MACHINE, "GENDER_LIB_WORKDIR": str(work), "GENDER_LIB_CACHE": str(cache), "IPYTHONDIR": os.environ["IPYTHONDIR"]}
    rest = nbval([NOTEBOOKS / f"{name}.ipynb" for name in ("03_train", "04_evaluate", "05_visualize")], env, tmp_path, cpus=1)
    assert rest.returncode == 0, rest.stdout[-4000:]


@pytest.mark.notebooks
def test_descriptor_noise_moves_the_trained_head_far_less_than_what_notebooks_print(chain_work, tmp_path):
    """The margin behind the test above, over several noise draws: what another CPU changes moves
    P(female) by far less than the 2-3 decimals the notebooks print, and leaves the early-stopping
    epoch alone (in float32 two of four draws took another path and moved P(female) by up to 0.099)."""
    from gender_lib import config, modeling, stages

    work, cache = copy_chain(chain_work, tmp_path)
    cfg = config.DEFAULT.replace(workdir=str(work), cache_dir=str(cache))

    def trained(c: config.Config) -> tuple[int, float, np.ndarray]:
        result = stages.train(c, progress=False)
        x = stages.load_descriptors(c).x
        return int(result.meta["history"]["best_epoch"][0]), float(result.meta["threshold"]), result.model.p_female(x)

    chain = modeling.load(stages.current_model(work))  # what notebook 03 trained, with these settings, on these descriptors
    epoch, threshold, p = int(chain.history_["best_epoch"][0]), chain.threshold_, chain.p_female(stages.load_descriptors(cfg).x)
    for seed in (1, 2):
        noisy = tmp_path / f"cache{seed}"
        shutil.copytree(cache, noisy)
        perturb_cache(noisy, RELATIVE_NOISE, seed)
        other_epoch, other_threshold, other_p = trained(cfg.replace(cache_dir=str(noisy)))
        assert other_epoch == epoch
        assert abs(other_threshold - threshold) < 5e-4  # printed to 3 decimals
        assert np.abs(other_p - p).max() < 1e-3, np.abs(other_p - p).max()  # P(female) printed to 2-3 decimals
