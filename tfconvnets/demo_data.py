"""The embedded demo dataset: 1,797 handwritten digits (UCI's, as scikit-learn ships them; kept in
`data/assets/digits.npz`) as an ImageNet-style folder.

    python -m tfconvnets.demo_data --output_dir=DIR

Each 8x8 digit is scaled to 0-255, upsampled (bicubic) to 32x32, centred on a 40x40 black
canvas (room for crop augmentation), and saved as an RGB JPEG under
`train/<digit>/` or `validation/<digit>/` with a fixed stratified 80/20 split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from absl import app, flags
from PIL import Image

DIGIT_SIZE = 32
CANVAS_SIZE = 40
# Pixel values 0-16, labels, and the fixed stratified 80/20 split (assets/README.md).
DIGITS_FILE = Path(__file__).parent / "data" / "assets" / "digits.npz"


def write_digits_folder(output_dir: str) -> dict[str, int]:
    """Writes the folder and returns the number of images per split."""
    with np.load(DIGITS_FILE) as digits:
        images, labels, validation = digits["images"], digits["labels"], digits["validation"]
    indices = np.arange(len(labels))
    train_idx, val_idx = indices[~validation], indices[validation]
    offset = (CANVAS_SIZE - DIGIT_SIZE) // 2
    for split, split_idx in (("train", train_idx), ("validation", val_idx)):
        for i in split_idx:
            grey = Image.fromarray((images[i] * (255.0 / 16.0)).astype(np.uint8))
            canvas = Image.new("L", (CANVAS_SIZE, CANVAS_SIZE), 0)
            canvas.paste(grey.resize((DIGIT_SIZE, DIGIT_SIZE), Image.BICUBIC), (offset, offset))
            folder = Path(output_dir, split, str(labels[i]))
            folder.mkdir(parents=True, exist_ok=True)
            canvas.convert("RGB").save(folder / f"digit_{i:04d}.JPEG", quality=95)
    return {"train": len(train_idx), "validation": len(val_idx)}


def main(argv: list[str]) -> None:
    del argv
    counts = write_digits_folder(flags.FLAGS.output_dir)
    print(
        f"wrote {counts['train']} train and {counts['validation']} validation digits to {flags.FLAGS.output_dir}"
    )


if __name__ == "__main__":
    flags.DEFINE_string("output_dir", None, "Where to write train/ and validation/.", required=True)
    app.run(main)
