"""Tiny ImageNets in the exact layouts users receive: the official tars, their extracted form,
Kaggle's copy and plain folders, all holding the same images.

The devkit's meta.mat is written with scipy as the real one is: a struct array ``synsets``
(ILSVRC2012_ID, WNID, words, gloss, num_children, ...), IDs in the devkit's own order, which
is not sorted by wnid, plus a non-leaf synset. The ground truth lists one ILSVRC2012_ID per
validation image, line k for ``ILSVRC2012_val_0000000k.JPEG``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import tarfile

import numpy as np
from PIL import Image

from tfconvnets.data.sample_images import _sample_photos, make_sample_image

# (ILSVRC2012_ID, wnid, words): devkit order, deliberately not sorted by wnid.
SYNSETS = (
    (1, "n01491361", "tiger shark, Galeocerdo cuvieri"),
    (2, "n01440764", "tench, Tinca tinca"),
    (3, "n01484850", "great white shark, white shark, man-eater, man-eating shark"),
    (4, "n01443537", "goldfish, Carassius auratus"),
)
NON_LEAF = (5, "n01439121", "cyprinid")  # a non-leaf synset, as meta.mat also holds
SORTED_WNIDS = sorted(w for _, w, _ in SYNSETS)
WORDS = {w: words for _, w, words in SYNSETS}
CMYK_NAME = "n01440764_cmyk.JPEG"  # a CMYK JPEG, as 22 of ImageNet's are
PNG_NAME = "n01443537_png.JPEG"  # a PNG named .JPEG, as one of ImageNet's is
TRUNCATED_NAME = "n01484850_truncated.JPEG"


def label_of(wnid: str) -> int:
    """TF-slim's label: 1 + the index in sorted wnid order."""
    return SORTED_WNIDS.index(wnid) + 1


@dataclasses.dataclass
class TinyImageNet:
    train: dict[str, list[tuple[str, bytes]]]  # wnid -> [(file name, bytes)]
    val: list[tuple[str, bytes, str]]  # (ILSVRC2012_val_... name, bytes, wnid), in number order

    def train_wnid(self) -> dict[str, str]:
        return {name: wnid for wnid, files in self.train.items() for name, _ in files}

    def val_wnid(self) -> dict[str, str]:
        return {name: wnid for name, _, wnid in self.val}


def _jpeg(image: Image.Image, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, **kwargs)
    return out.getvalue()


def make_images(
    per_class_train: int = 3, num_val: int = 8, size: tuple[int, int] = (40, 32), *,
    specials: bool = True, truncated: bool = False, seed: int = 0,
) -> TinyImageNet:  # fmt: skip
    """Photo crops per class; with ``specials`` one CMYK and one PNG-disguised train image."""
    rng = np.random.default_rng(seed)
    photos = _sample_photos()

    def photo() -> Image.Image:
        return make_sample_image(photos, rng, size)

    train: dict[str, list[tuple[str, bytes]]] = {}
    for _, wnid, _ in SYNSETS:
        train[wnid] = [
            (f"{wnid}_{i + 1}.JPEG", _jpeg(photo(), format="JPEG", quality=90))
            for i in range(per_class_train)
        ]
    if specials:
        train["n01440764"].append((CMYK_NAME, _jpeg(photo().convert("CMYK"), format="JPEG")))
        train["n01443537"].append((PNG_NAME, _jpeg(photo(), format="PNG")))
    if truncated:
        good = _jpeg(photo(), format="JPEG", quality=90)
        train["n01484850"].append((TRUNCATED_NAME, good[: len(good) // 2]))
    for files in train.values():
        files.sort()
    # Validation classes cycle through the devkit order, so ID order != label order.
    val = [
        (
            f"ILSVRC2012_val_{k:08d}.JPEG",
            _jpeg(photo(), format="JPEG", quality=90),
            SYNSETS[(k * 3) % len(SYNSETS)][1],
        )
        for k in range(1, num_val + 1)
    ]
    return TinyImageNet(train, val)


def _tar_bytes(files: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_337_000_000
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _write(path: str, data: bytes | str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)


def meta_mat_bytes() -> bytes:
    import scipy.io

    fields = [
        ("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("gloss", "O"),
        ("num_children", "O"), ("children", "O"), ("wordnet_height", "O"),
        ("num_train_images", "O"),
    ]  # fmt: skip
    rows = [(i, w, words, 0) for i, w, words in SYNSETS] + [(*NON_LEAF, 4)]
    synsets = np.zeros((len(rows), 1), dtype=fields)
    for r, (ilsvrc_id, wnid, words, children) in enumerate(rows):
        synsets[r, 0] = (
            np.array([[ilsvrc_id]], dtype=np.uint16),
            wnid,
            words,
            f"gloss of {wnid}",
            np.array([[children]], dtype=np.uint8),
            np.array([[1, 2, 3, 4]] if children else np.zeros((0, 0)), dtype=np.uint8),
            np.array([[0]], dtype=np.uint8),
            np.array([[3]], dtype=np.uint16),
        )
    out = io.BytesIO()
    scipy.io.savemat(out, {"synsets": synsets})
    return out.getvalue()


def ground_truth_text(data: TinyImageNet) -> str:
    ids = {w: i for i, w, _ in SYNSETS}
    return "".join(f"{ids[wnid]}\n" for _, _, wnid in data.val)


def write_official_tars(root: str, data: TinyImageNet) -> str:
    """ILSVRC2012_img_train.tar (a tar of <wnid>.tar), ILSVRC2012_img_val.tar, devkit tar.gz."""
    os.makedirs(root, exist_ok=True)
    inner = [(f"{wnid}.tar", _tar_bytes(files)) for wnid, files in data.train.items()]
    _write(os.path.join(root, "ILSVRC2012_img_train.tar"), _tar_bytes(inner))
    val = [(name, image) for name, image, _ in data.val]
    _write(os.path.join(root, "ILSVRC2012_img_val.tar"), _tar_bytes(val))
    devkit = [
        ("ILSVRC2012_devkit_t12/data/meta.mat", meta_mat_bytes()),
        ("ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt",
         ground_truth_text(data).encode()),
        ("ILSVRC2012_devkit_t12/readme.txt", b"devkit"),
    ]  # fmt: skip
    with tarfile.open(os.path.join(root, "ILSVRC2012_devkit_t12.tar.gz"), "w:gz") as tar:
        for name, content in devkit:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return root


def write_official_extracted(root: str, data: TinyImageNet, *, inner_tars: bool = False) -> str:
    """train/<wnid>/ (or train/<wnid>.tar), flat val/, ILSVRC2012_devkit_t12/data/."""
    for wnid, files in data.train.items():
        if inner_tars:
            _write(os.path.join(root, "train", f"{wnid}.tar"), _tar_bytes(files))
        else:
            for name, image in files:
                _write(os.path.join(root, "train", wnid, name), image)
    for name, image, _ in data.val:
        _write(os.path.join(root, "val", name), image)
    devkit = os.path.join(root, "ILSVRC2012_devkit_t12", "data")
    _write(os.path.join(devkit, "meta.mat"), meta_mat_bytes())
    _write(os.path.join(devkit, "ILSVRC2012_validation_ground_truth.txt"), ground_truth_text(data))
    return root


def write_kaggle(root: str, data: TinyImageNet) -> str:
    base = os.path.join(root, "ILSVRC", "Data", "CLS-LOC")
    for wnid, files in data.train.items():
        for name, image in files:
            _write(os.path.join(base, "train", wnid, name), image)
    for name, image, _ in data.val:
        _write(os.path.join(base, "val", name), image)
    with open(os.path.join(root, "LOC_val_solution.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["ImageId", "PredictionString"])
        for name, _, wnid in reversed(data.val):  # the CSV's own order is not file order
            writer.writerow([os.path.splitext(name)[0], f"{wnid} 1 2 30 25 {wnid} 3 3 20 20 "])
    _write(
        os.path.join(root, "LOC_synset_mapping.txt"),
        "".join(f"{w} {WORDS[w]}\n" for w in SORTED_WNIDS),
    )
    return root


def write_folders(root: str, data: TinyImageNet) -> str:
    """PyTorch's ImageFolder layout: train/<wnid>/, validation/<wnid>/."""
    for wnid, files in data.train.items():
        for name, image in files:
            _write(os.path.join(root, "train", wnid, name), image)
    for name, image, wnid in data.val:
        _write(os.path.join(root, "validation", wnid, name), image)
    return root
