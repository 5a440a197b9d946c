"""The upload widget renders user text (file names, messages quoting them) as escaped HTML.

A fake predictor stands in for the model, so these tests need no head or detector.
"""

from __future__ import annotations

import datetime
import io

import pytest
from PIL import Image

from gender_lib import widgets
from gender_lib.predict import Face

HOSTILE = "<img src=x onerror=alert(1)>.jpg"


class FakePredictor:
    """Returns the same faces for every image, and records the names it was given."""

    def __init__(self, faces: list[Face]):
        self.faces = faces
        self.names: list[str] = []

    def predict(self, rgb, detect: bool = True, name: str = "image") -> list[Face]:
        self.names.append(name)
        return list(self.faces)


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 40), (200, 150, 120)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _upload(name: str, content: bytes) -> dict:
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    return {"name": name, "type": "image/jpeg", "size": len(content), "content": memoryview(content), "last_modified": now}


def _labels(box) -> list[str]:
    return [child.children[0].value if hasattr(child, "children") else child.value for child in box.output.children]


@pytest.mark.parametrize(
    "faces, content, expected",
    [
        ([Face((5, 5, 30, 30), "F", 0.9)], _jpeg(), "face 1: female"),
        ([], _jpeg(), "no face found"),
        ([], b"not an image at all", "not an image"),
    ],
    ids=["face", "no-face", "not-an-image"],
)
def test_uploaded_file_name_is_escaped_in_the_rendered_html(faces, content, expected):
    predictor = FakePredictor(faces)
    results = widgets.handle_upload([_upload(HOSTILE, content)], predictor)
    assert results[0].name == HOSTILE  # the data keeps the real name; escaping happens when rendering

    box = widgets.upload_and_predict(predictor)
    box.upload.value = (_upload(HOSTILE, content),)
    (label,) = _labels(box)
    assert expected in label
    assert "&lt;img src=x onerror=alert(1)&gt;.jpg" in label
    assert "<img" not in label
    assert label.startswith("<b class='gender-lib-result'>") and label.endswith("</b>")  # our own markup stays


def test_names_with_quotes_and_ampersands_are_escaped_too():
    box = widgets.upload_and_predict(FakePredictor([]))
    box.upload.value = (_upload("Tom & \"Jerry\" 'n' <b>.jpg", _jpeg()),)
    (label,) = _labels(box)
    assert "Tom &amp; &quot;Jerry&quot; &#x27;n&#x27; &lt;b&gt;.jpg" in label


def test_a_dollar_sign_in_the_name_is_not_parsed_as_matplotlib_mathtext():
    box = widgets.upload_and_predict(FakePredictor([]))
    box.upload.value = (_upload(r"a $\frac{$ b.jpg", _jpeg()),)  # mathtext would raise a ParseSyntaxException
    (child,) = box.output.children
    assert r"a $\frac{$ b.jpg: no face found" in child.children[0].value
    assert child.children[1].value[:8] == b"\x89PNG\r\n\x1a\n"
