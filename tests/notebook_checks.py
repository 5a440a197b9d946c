"""What a person must see in an executed notebook: used on the committed notebooks and on fresh runs."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path


def _last_is_expression(source: str) -> bool:
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return False
    return bool(body) and isinstance(body[-1], ast.Expr) and not (isinstance(body[-1].value, ast.Call) and getattr(body[-1].value.func, "id", "") == "print")


def plots_something(source: str) -> bool:
    """A cell that makes a figure (plots.*, or a Plot's .save)."""
    return "plots." in source


def problems(path: Path) -> list[str]:
    """Code cells that print or display but stored nothing, and plotting cells without an image."""
    out = []
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    for number, cell in enumerate(cells, 1):
        source = "".join(cell["source"])
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            continue
        outputs = cell.get("outputs", [])
        if ("print(" in source or _last_is_expression(source)) and not outputs:
            out.append(f"{path.name} code cell {number}: prints or displays but has no stored output")
        if plots_something(source) and not any("image/png" in o.get("data", {}) for o in outputs):
            out.append(f"{path.name} code cell {number}: makes a figure but stored no image/png output")
        errors = [o for o in outputs if o.get("output_type") == "error"]
        if errors:
            out.append(f"{path.name} code cell {number}: stored an error ({errors[0].get('ename')})")
    return out


def images(path: Path) -> int:
    cells = json.loads(path.read_text())["cells"]
    return sum("image/png" in o.get("data", {}) for c in cells if c["cell_type"] == "code" for o in c.get("outputs", []))


def nbval(notebooks: list[Path], env: dict[str, str], cwd: Path, cpus: int | None = None) -> subprocess.CompletedProcess[str]:
    """``pytest --nbval`` on ``notebooks`` in a fresh process, as ``make test`` runs it (same sanitizer);
    ``cpus``: on that many of this process's CPUs only (its affinity, which the kernels inherit)."""
    import os

    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval", "--nbval-current-env"]
    command += ["--nbval-sanitize-with", str(root / "notebooks" / "sanitize.cfg"), *map(str, notebooks)]
    allowed = sorted(os.sched_getaffinity(0))[:cpus] if cpus else None
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, preexec_fn=(lambda: os.sched_setaffinity(0, allowed)) if allowed else None)
