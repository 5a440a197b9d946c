"""An 80 MP photo (10328x7760) with four sample faces of 24-300 px planted, one across the first
tiles' corner: detection time, faces found and the process's peak memory before and after detection.

    .venv/bin/python benchmarks/detect_80mp.py
"""

import resource
import time

import numpy as np
from PIL import Image

from gender_lib import config, faces

rng = np.random.default_rng(0)
W, H = 10328, 7760
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rgb = rng.integers(95, 155, (H, W, 3), dtype=np.uint8)
sample = sorted(config.paths().sample.glob("[2-5]?_[FM]/nm*.jpg"))
spots = [(24, (5000, 3000)), (24, (881, 881)), (48, (9000, 7000)), (300, (2000, 5000))]
img = Image.fromarray(rgb)
for i, (w, at) in enumerate(spots):
    img.paste(Image.open(sample[i]).convert("RGB").resize((int(w / 0.7),) * 2, Image.BICUBIC), at)
rgb = np.asarray(img)
del img
faces.detector()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
found = faces.detect(rgb)
dt = time.perf_counter() - t
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
hits = sum(
    any(at[0] <= (d.box[0] + d.box[2]) / 2 <= at[0] + w / 0.7 and at[1] <= (d.box[1] + d.box[3]) / 2 <= at[1] + w / 0.7 for d in found) for w, at in spots
)
print(f"80 MP ({W}x{H}): {dt:.1f} s, {hits} of {len(spots)} planted faces (24-300 px) found, {len(found)} boxes")
print(f"peak memory: {before / 1024:.0f} MB before detection (image held), {after / 1024:.0f} MB after: +{(after - before) / 1024:.0f} MB")
