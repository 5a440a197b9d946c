"""The upload-and-predict UI for notebooks (the package's only ipywidgets import).

:func:`handle_upload` is the pure part (uploaded files -> results) and is what tests call;
:func:`upload_and_predict` wires it to a ``FileUpload`` and renders each image with its
boxes, labels and probabilities.
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Sequence
from typing import Any

from gender_lib import plots
from gender_lib.predict import Face, PredictionError, Predictor, read_image


@dataclasses.dataclass
class UploadResult:
    """What one uploaded file gave: faces, or a message saying why not."""

    name: str
    faces: list[Face]
    message: str = ""
    rgb: Any = None

    def text(self) -> str:
        if self.message:
            return f"{self.name}: {self.message}"
        return f"{self.name}: " + "; ".join(f"face {i + 1}: {face.text()}" for i, face in enumerate(self.faces))


def handle_upload(files: Sequence[dict[str, Any]], predictor: Predictor, detect: bool = True) -> list[UploadResult]:
    """ipywidgets 8 ``FileUpload.value`` (dicts with ``name`` and ``content``) -> one result per file."""
    results = []
    for item in files:
        name = item.get("name", "upload")
        try:
            rgb = read_image(bytes(item["content"]), name)
            faces = predictor.predict(rgb, detect=detect, name=name)
        except PredictionError as error:
            results.append(UploadResult(name, [], str(error).removeprefix(f"{name}: ")))
            continue
        except Exception as error:  # noqa: BLE001 - one file must not end the others' answers
            results.append(UploadResult(name, [], f"could not be predicted ({type(error).__name__}: {error})"))
            continue
        results.append(UploadResult(name, faces, "" if faces else "no face found (try a larger, frontal photo)", rgb))
    return results


#: What a static render of the notebook (nbconvert HTML, a repository viewer) shows in place of
#: the widget, which needs a running kernel.
STATIC_FALLBACK = (
    "Upload widget: open this notebook in JupyterLab and run the cell to choose photos; "
    "each is shown with its faces boxed and labelled. (A static view of the notebook cannot run it.)"
)


def _with_static_fallback(box: Any) -> Any:
    """``box`` whose display also carries text/plain and text/html for renderers without a kernel;
    live front ends prefer the widget view."""
    live = box._repr_mimebundle_

    def bundle(**kwargs: Any) -> Any:
        data = live(**kwargs)
        if isinstance(data, dict):
            data = {**data, "text/plain": STATIC_FALLBACK, "text/html": f"<p><i>{html.escape(STATIC_FALLBACK)}</i></p>"}
        return data

    box._repr_mimebundle_ = bundle
    return box


def upload_and_predict(predictor: Predictor | None = None, detect: bool = True) -> Any:
    """A ``FileUpload`` (several files at once) that shows each image with its faces labelled.

    Displayed outside a kernel (a static render), it reads as :data:`STATIC_FALLBACK`."""
    import ipywidgets as w

    predictor = predictor or Predictor()
    upload = w.FileUpload(accept="image/*", multiple=True, description="Upload photos")
    output = w.VBox([w.HTML("<i>Choose one or more photos with faces.</i>")])

    def on_change(change: dict[str, Any]) -> None:
        results = handle_upload(change["new"], predictor, detect)
        children = []
        for result in results:
            # File names (and messages quoting them) are user text: escape before they reach HTML.
            label = w.HTML(f"<b class='gender-lib-result'>{html.escape(result.text())}</b>")
            if result.rgb is not None:
                # A '$' in the name would start matplotlib mathtext (and can raise): show it literally.
                title = result.name.replace("$", r"\$")
                children.append(w.VBox([label, w.Image(value=plots.detections(result.rgb, result.faces, title).png(), format="png", width=360)]))
            else:
                children.append(label)
        output.children = children or [w.HTML("<i>No files.</i>")]

    upload.observe(on_change, names="value")
    box = w.VBox([upload, output])
    box.upload, box.output = upload, output  # for tests and advanced use
    return _with_static_fallback(box)
