"""Writes the image folder that scripts/bench_loader.sh times: 8 classes x 128 JPEGs of
about 400x300 (sides vary a little), smooth gradients with shapes and mild noise so the
files compress like photographs (tens of kB), quality 90. Deterministic; skipped when the
folder is already complete.

Usage: python3 make_bench_images.py <dir> [per_class=128] [scale=1]
(writes <dir>/train/<class>/*.jpg; `scale` multiplies the sides: 4 gives about 1600x1200,
10 about 4000x3000, as phone photos)
"""

import os
import sys

import numpy as np
from PIL import Image, ImageDraw

CLASSES = 8


def main(root: str, per_class: int = 128, scale: int = 1) -> None:
    train = os.path.join(root, "train")
    done = os.path.join(root, ".complete")
    if os.path.exists(done):
        return
    rng = np.random.default_rng(0)
    for c in range(CLASSES):
        d = os.path.join(train, f"class_{c}")
        os.makedirs(d, exist_ok=True)
        for i in range(per_class):
            w, h = int(rng.integers(360, 441)), int(rng.integers(270, 331))
            w, h = w * scale, h * scale
            y, x = np.mgrid[0:h, 0:w].astype(np.float32)
            base = rng.uniform(0, 255, 3)
            slope = rng.uniform(-0.4, 0.4, (2, 3))
            img = base + x[..., None] * slope[0] + y[..., None] * slope[1]
            img += rng.normal(0, 6, (h, w, 3))
            im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
            draw = ImageDraw.Draw(im)
            for _ in range(6):
                x0, y0 = int(rng.integers(0, w - 40 * scale)), int(rng.integers(0, h - 40 * scale))
                box = [x0, y0, x0 + int(rng.integers(20, 160)) * scale,
                       y0 + int(rng.integers(20, 120)) * scale]
                colour = tuple(int(v) for v in rng.integers(0, 256, 3))
                (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
            im.save(os.path.join(d, f"{i:04d}.jpg"), quality=90)
    open(done, "w").close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 128,
         int(sys.argv[3]) if len(sys.argv) > 3 else 1)
