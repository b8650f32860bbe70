"""Realistic ImageNet-style JPEG folders for benchmarks and tests, without any download.

The pixels come from two photos kept in `assets/` (china.jpg, flower.jpg, from scikit-learn):
random resized crops and flips of them, resized to about ``size``, so decoders and resizers
see real photographic content (entropy, JPEG statistics) rather than noise.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = tuple(Path(__file__).parent / "assets" / name for name in ("china.jpg", "flower.jpg"))


def _sample_photos() -> list[Image.Image]:
    photos = []
    for path in PHOTOS:
        with Image.open(path) as photo:
            photos.append(photo.convert("RGB"))
    return photos


def make_sample_image(
    photos: list[Image.Image], rng: np.random.Generator, size: tuple[int, int]
) -> Image.Image:
    """A random crop (10-100% area, aspect 3/4-4/3) of a photo, maybe flipped, about ``size``.

    The output width/height vary by up to 10% around ``size`` (and one in four is portrait),
    as ImageNet's do, so batches of decoded images are ragged.
    """
    photo = photos[rng.integers(len(photos))]
    width, height = photo.size
    area = width * height * rng.uniform(0.1, 1.0)
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    crop_w = int(min(width, round(np.sqrt(area * aspect))))
    crop_h = int(min(height, round(np.sqrt(area / aspect))))
    left = int(rng.integers(width - crop_w + 1))
    top = int(rng.integers(height - crop_h + 1))
    image = photo.crop((left, top, left + crop_w, top + crop_h))
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    out_w, out_h = (int(round(s * rng.uniform(0.9, 1.1))) for s in size)
    if rng.random() < 0.25:
        out_w, out_h = out_h, out_w
    return image.resize((max(out_w, 1), max(out_h, 1)), Image.Resampling.BILINEAR)


def write_sample_jpeg_folder(
    out_dir: str,
    num_train: int,
    num_val: int,
    num_classes: int,
    size: tuple[int, int] = (500, 375),
    quality: int = 90,
    seed: int = 0,
) -> str:
    """Writes ``out_dir/{train,validation}/class_XXXX/*.JPEG`` and returns ``out_dir``.

    Images are dealt to classes round-robin, so every class has images when there are at
    least ``num_classes`` of them.
    """
    rng = np.random.default_rng(seed)
    photos = _sample_photos()
    for split, count in (("train", num_train), ("validation", num_val)):
        for class_index in range(num_classes):
            os.makedirs(os.path.join(out_dir, split, f"class_{class_index:04d}"), exist_ok=True)
        for i in range(count):
            class_dir = os.path.join(out_dir, split, f"class_{i % num_classes:04d}")
            image = make_sample_image(photos, rng, size)
            image.save(os.path.join(class_dir, f"{split}_{i:06d}.JPEG"), quality=quality)
    return out_dir
