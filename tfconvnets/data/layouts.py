"""The ways ImageNet is held on disk, read in place: folders, the official tars, Kaggle's copy.

Layouts (``--layout`` for dataprep, ``DataConfig.data_layout`` for training), each relative to
one root folder:

- ``folders``: ``train/<class>/*.JPEG`` and ``validation/<class>/*.JPEG`` (or ``val/``), as
  PyTorch's ImageFolder reads them. An optional ``imagenet_metadata.txt`` (TF-slim's
  ``<wnid><TAB><names>`` file) gives the classes human-readable names.
- ``ilsvrc2012``: the official release. Train: ``ILSVRC2012_img_train.tar`` (a tar of
  ``<wnid>.tar``), or ``train/`` holding those ``<wnid>.tar`` or extracted ``<wnid>/``
  folders. Validation: ``ILSVRC2012_img_val.tar`` or a flat ``val/`` (or ``validation/``) of
  ``ILSVRC2012_val_NNNNNNNN.JPEG``, labelled by the devkit's
  ``data/ILSVRC2012_validation_ground_truth.txt`` (one ILSVRC2012_ID per line, line k for
  image k) and ``data/meta.mat`` (IDs -> WNIDs and names). The devkit may be
  ``ILSVRC2012_devkit_t12.tar.gz``, its extracted folder, or those two files in the root.
- ``kaggle``: "ImageNet Object Localization": ``ILSVRC/Data/CLS-LOC/train/<wnid>/``, a flat
  ``ILSVRC/Data/CLS-LOC/val/``, ``LOC_val_solution.csv`` (ImageId, then the wnid as the first
  token of PredictionString) and ``LOC_synset_mapping.txt`` (``<wnid> <names>``).

Labels are 1..C in sorted order of the train classes (wnids), as TF-slim's converter numbers
them, so records made by either mean the same labels.

Images inside tars are read in place: the tar headers are listed once and each image is
then a byte range of the tar file (nothing is extracted to disk).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import re
import tarfile
from collections.abc import Iterator

from tfconvnets.config.data import FOLDER_LAYOUTS as LAYOUTS
from tfconvnets.data.labels import ClassLabel
from tfconvnets.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
SPLITS = ("train", "validation")

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
DEVKIT_TAR = "ILSVRC2012_devkit_t12.tar.gz"
DEVKIT_DIR = "ILSVRC2012_devkit_t12"
GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
META_MAT = "meta.mat"
KAGGLE_DIR = os.path.join("ILSVRC", "Data", "CLS-LOC")
KAGGLE_SOLUTION = "LOC_val_solution.csv"
KAGGLE_SYNSETS = "LOC_synset_mapping.txt"
SLIM_METADATA = "imagenet_metadata.txt"
_VAL_NAME = re.compile(r"^ILSVRC2012_val_(\d{8})\.[A-Za-z]+$")


@dataclasses.dataclass(frozen=True)
class ImageSource:
    """One image: a file, or a byte range (a member) of a tar file."""

    path: str  # the image file, or the tar that holds it
    name: str  # file name, stored as image/filename
    label: int  # 1..C
    offset: int = -1  # start of the member's bytes in ``path``; -1: the whole file
    size: int = -1

    def read(self) -> bytes:
        with open(self.path, "rb") as f:
            if self.offset < 0:
                return f.read()
            f.seek(self.offset)
            data = f.read(self.size)
        if len(data) != self.size:
            raise OSError(f"{self.path} ends inside member {self.name}")
        return data

    def describe(self) -> str:
        """Where the image is, for messages (``tar:member`` for tar members)."""
        return self.path if self.offset < 0 else f"{self.path}:{self.name}"


@dataclasses.dataclass(frozen=True)
class SplitSource:
    path: str
    kind: str  # class_folders | class_tars | tar_of_class_tars | flat_folder | flat_tar


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A located dataset: its classes (entry i-1 is label i) and where each split is."""

    root: str
    layout: str
    classes: tuple[ClassLabel, ...]
    sources: dict[str, SplitSource]
    flat_labels: dict[str, str]  # flat validation: image file name -> wnid
    label_files: tuple[str, ...]  # the files the flat validation labels came from

    @property
    def labels(self) -> dict[str, int]:
        return {c.synset: i + 1 for i, c in enumerate(self.classes)}

    def describe(self) -> str:
        parts = [
            f"{s}: {src.path} ({src.kind.replace('_', ' ')})" for s, src in self.sources.items()
        ]
        if self.label_files:
            parts.append("validation labels: " + ", ".join(self.label_files))
        return f"layout {self.layout}, {len(self.classes)} classes; " + "; ".join(parts)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _first_existing(root: str, names: tuple[str, ...]) -> str | None:
    for name in names:
        path = os.path.join(root, name)
        if os.path.exists(path):
            return path
    return None


def detect_layout(root: str, flag: str = "--input_dir") -> str:
    """The layout of ``root``, from the names the three layouts use."""
    if not os.path.isdir(root):
        raise UserError(f"{flag}={root}: no such directory")

    def has(*names: str) -> bool:
        return _first_existing(root, names) is not None

    if has(KAGGLE_DIR, KAGGLE_SYNSETS, KAGGLE_SOLUTION):
        return "kaggle"
    if has(TRAIN_TAR, VAL_TAR, DEVKIT_TAR, DEVKIT_DIR, META_MAT, GROUND_TRUTH):
        return "ilsvrc2012"
    train = os.path.join(root, "train")
    if os.path.isdir(train):
        if any(e.is_file() and e.name.endswith(".tar") for e in os.scandir(train)):
            return "ilsvrc2012"
        return "folders"
    raise UserError(
        f"{flag}={root}: found no ImageNet layout: expected train/<class>/ and validation/<class>/ "
        f"folders, the official {TRAIN_TAR} / {VAL_TAR} with the devkit, or Kaggle's "
        f"{KAGGLE_DIR}/ with {KAGGLE_SOLUTION}"
    )


# ---------------------------------------------------------------------------------------------
# Class names: meta.mat, LOC_synset_mapping.txt, imagenet_metadata.txt


@dataclasses.dataclass(frozen=True)
class DevkitFiles:
    meta_mat: bytes
    ground_truth: bytes
    meta_name: str  # where they came from, for messages
    ground_truth_name: str


def _find_devkit(root: str) -> DevkitFiles:
    tar_path = os.path.join(root, DEVKIT_TAR)
    if os.path.isfile(tar_path):
        found: dict[str, bytes] = {}
        names: dict[str, str] = {}
        try:
            with tarfile.open(tar_path, "r:*") as tar:
                for member in tar:
                    base = os.path.basename(member.name)
                    if member.isfile() and base in (META_MAT, GROUND_TRUTH):
                        extracted = tar.extractfile(member)
                        assert extracted is not None
                        found[base] = extracted.read()
                        names[base] = f"{tar_path}:{member.name}"
        except (tarfile.TarError, OSError, EOFError) as e:
            raise UserError(f"{tar_path}: not a readable tar.gz ({e})") from None
        for base in (META_MAT, GROUND_TRUTH):
            if base not in found:
                raise UserError(f"{tar_path}: no data/{base} inside")
        return DevkitFiles(
            found[META_MAT], found[GROUND_TRUTH], names[META_MAT], names[GROUND_TRUTH]
        )
    for folder in (os.path.join(root, DEVKIT_DIR, "data"), os.path.join(root, "data"), root):
        meta, truth = os.path.join(folder, META_MAT), os.path.join(folder, GROUND_TRUTH)
        if os.path.isfile(meta) or os.path.isfile(truth):
            for path in (meta, truth):
                if not os.path.isfile(path):
                    raise UserError(
                        f"{path}: missing (the devkit's {GROUND_TRUTH} and {META_MAT} go together)"
                    )
            with open(meta, "rb") as f, open(truth, "rb") as g:
                return DevkitFiles(f.read(), g.read(), meta, truth)
    raise UserError(
        f"{root}: the ILSVRC2012 devkit is missing: put {DEVKIT_TAR}, its extracted "
        f"{DEVKIT_DIR}/ folder, or data/{META_MAT} and data/{GROUND_TRUTH} there"
    )


def read_meta_mat(data: bytes, name: str) -> dict[int, ClassLabel]:
    """ILSVRC2012_ID -> (WNID, words) of the devkit's ``meta.mat`` ``synsets`` struct array."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(io.BytesIO(data), squeeze_me=True, struct_as_record=False)
    except (ValueError, TypeError, OSError) as e:
        raise UserError(f"{name}: not a MATLAB file scipy can read ({e})") from None
    if "synsets" not in mat:
        raise UserError(f"{name}: no 'synsets' struct array (is it the devkit's meta.mat?)")
    synsets = mat["synsets"]
    entries = synsets.ravel() if hasattr(synsets, "ravel") else [synsets]
    classes = {}
    for entry in entries:
        try:
            ilsvrc_id = int(entry.ILSVRC2012_ID)
            wnid, words = str(entry.WNID), str(entry.words)
        except AttributeError as e:
            raise UserError(f"{name}: synsets lack a field ({e})") from None
        classes[ilsvrc_id] = ClassLabel(wnid, words)
    return classes


def read_synset_mapping(path: str) -> dict[str, str]:
    """``<wnid> <names>`` per line (Kaggle's LOC_synset_mapping.txt, TF-slim's metadata)."""
    names = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            wnid, _, text = (
                line.strip().partition(" ") if "\t" not in line else line.strip().partition("\t")
            )
            if not wnid.startswith("n"):
                raise UserError(f"{path}:{number}: expected '<wnid> <names>', got {line.strip()!r}")
            names[wnid] = text.strip() or wnid
    return names


# ---------------------------------------------------------------------------------------------
# Listing images


def _class_folders(path: str) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir())


def _folder_images(path: str) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_file() and _is_image(e.name))


def _tar_images(tar: tarfile.TarFile, base_offset: int) -> Iterator[tuple[str, int, int]]:
    """(name, absolute offset, size) of the image members of an uncompressed tar."""
    for member in tar:
        if member.isfile() and _is_image(member.name):
            yield os.path.basename(member.name), base_offset + member.offset_data, member.size


def _open_tar(path: str) -> tarfile.TarFile:
    try:
        # "r:" (not "r:*"): images are read back as byte ranges, so no compression.
        return tarfile.open(path, "r:")
    except (tarfile.TarError, OSError) as e:
        raise UserError(f"{path}: not a readable uncompressed tar ({e})") from None


def _split_classes(source: SplitSource) -> list[str]:
    """The class names (wnids) of a class-structured split, sorted."""
    if source.kind == "class_folders":
        return _class_folders(source.path)
    if source.kind == "class_tars":
        return sorted(
            e.name[: -len(".tar")] for e in os.scandir(source.path) if e.name.endswith(".tar")
        )
    with _open_tar(source.path) as tar:
        return sorted(
            os.path.basename(m.name)[: -len(".tar")]
            for m in tar
            if m.isfile() and m.name.endswith(".tar")
        )


def _list_class_split(source: SplitSource, labels: dict[str, int]) -> list[ImageSource]:
    items: list[ImageSource] = []

    def label_of(wnid: str) -> int:
        if wnid not in labels:
            raise UserError(f"{source.path}: class {wnid} is not a train class")
        return labels[wnid]

    try:
        if source.kind == "class_folders":
            for wnid in _class_folders(source.path):
                folder = os.path.join(source.path, wnid)
                label = label_of(wnid)
                items += [
                    ImageSource(os.path.join(folder, n), n, label) for n in _folder_images(folder)
                ]
        elif source.kind == "class_tars":
            for name in sorted(n for n in os.listdir(source.path) if n.endswith(".tar")):
                label = label_of(name[: -len(".tar")])
                path = os.path.join(source.path, name)
                with _open_tar(path) as tar:
                    found = sorted(_tar_images(tar, 0))
                items += [ImageSource(path, n, label, o, s) for n, o, s in found]
        else:  # tar_of_class_tars
            with _open_tar(source.path) as outer:
                for member in outer:
                    if not (member.isfile() and member.name.endswith(".tar")):
                        continue
                    label = label_of(os.path.basename(member.name)[: -len(".tar")])
                    inner_file = outer.extractfile(member)
                    assert inner_file is not None
                    with tarfile.open(fileobj=inner_file, mode="r:") as inner:
                        found = sorted(_tar_images(inner, member.offset_data))
                    items += [ImageSource(source.path, n, label, o, s) for n, o, s in found]
            items.sort(key=lambda i: (i.label, i.name))
    except tarfile.TarError as e:
        raise UserError(f"{source.path}: a tar inside is unreadable ({e})") from None
    return items


def _flat_names(source: SplitSource) -> list[tuple[str, int, int]]:
    """(name, offset, size) of a flat split's images, by name; offset -1 for files."""
    if source.kind == "flat_folder":
        return [(n, -1, -1) for n in _folder_images(source.path)]
    with _open_tar(source.path) as tar:
        try:
            return sorted(_tar_images(tar, 0))
        except tarfile.TarError as e:
            raise UserError(f"{source.path}: unreadable tar ({e})") from None


# ---------------------------------------------------------------------------------------------
# Locating a dataset


def _train_source(root: str, layout: str) -> SplitSource:
    if layout == "kaggle":
        path = os.path.join(root, KAGGLE_DIR, "train")
        if not os.path.isdir(path):
            raise UserError(f"{root}: no {KAGGLE_DIR}/train/ folder (Kaggle layout)")
        return SplitSource(path, "class_folders")
    if layout == "ilsvrc2012" and os.path.isfile(os.path.join(root, TRAIN_TAR)):
        return SplitSource(os.path.join(root, TRAIN_TAR), "tar_of_class_tars")
    path = os.path.join(root, "train")
    if not os.path.isdir(path):
        expected = f"{TRAIN_TAR} or train/" if layout == "ilsvrc2012" else "train/<class>/"
        raise UserError(f"{root}: no {expected} (layout {layout})")
    if any(e.is_file() and e.name.endswith(".tar") for e in os.scandir(path)):
        return SplitSource(path, "class_tars")
    return SplitSource(path, "class_folders")


def _val_source(root: str, layout: str) -> SplitSource:
    if layout == "kaggle":
        path = os.path.join(root, KAGGLE_DIR, "val")
        if not os.path.isdir(path):
            raise UserError(f"{root}: no {KAGGLE_DIR}/val/ folder (Kaggle layout)")
    elif layout == "ilsvrc2012" and os.path.isfile(os.path.join(root, VAL_TAR)):
        return SplitSource(os.path.join(root, VAL_TAR), "flat_tar")
    else:
        found = _first_existing(root, ("validation", "val"))
        if found is None or not os.path.isdir(found):
            expected = f"{VAL_TAR} or val/" if layout == "ilsvrc2012" else "validation/<class>/"
            raise UserError(f"{root}: no {expected} (layout {layout})")
        path = found
    if _class_folders(path) and not _folder_images(path):
        return SplitSource(path, "class_folders")
    return SplitSource(path, "flat_folder")


def _devkit_val_labels(
    root: str, names: list[str], val: SplitSource
) -> tuple[dict[str, str], dict[int, ClassLabel], tuple[str, ...]]:
    devkit = _find_devkit(root)
    meta = read_meta_mat(devkit.meta_mat, devkit.meta_name)
    ids = []
    for number, line in enumerate(devkit.ground_truth.decode(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            ids.append(int(line))
        except ValueError:
            raise UserError(
                f"{devkit.ground_truth_name}:{number}: not an ILSVRC2012_ID: {line!r}"
            ) from None
    if len(names) != len(ids):
        raise UserError(
            f"{len(names)} validation images in {val.path} but {len(ids)} labels in "
            f"{devkit.ground_truth_name}"
        )
    flat = {}
    for name in names:
        match = _VAL_NAME.match(name)
        if not match:
            raise UserError(f"{val.path}: {name} is not named ILSVRC2012_val_NNNNNNNN.JPEG")
        index = int(match.group(1))
        if not 1 <= index <= len(ids):
            raise UserError(f"{val.path}: {name} has no line in {devkit.ground_truth_name}")
        ilsvrc_id = ids[index - 1]
        if ilsvrc_id not in meta:
            raise UserError(
                f"{devkit.ground_truth_name}:{index}: ILSVRC2012_ID {ilsvrc_id} not in {devkit.meta_name}"
            )
        flat[name] = meta[ilsvrc_id].synset
    return flat, meta, (devkit.ground_truth_name, devkit.meta_name)


def _kaggle_val_labels(
    root: str, names: list[str], val: SplitSource
) -> tuple[dict[str, str], tuple[str, ...]]:
    path = os.path.join(root, KAGGLE_SOLUTION)
    if not os.path.isfile(path):
        raise UserError(f"{path}: missing (Kaggle's validation labels)")
    by_id = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
            raise UserError(f"{path}: expected the header ImageId,PredictionString")
        for number, row in enumerate(reader, 2):
            if len(row) < 2 or not row[1].split():
                raise UserError(f"{path}:{number}: expected ImageId,PredictionString")
            by_id[row[0].strip()] = row[1].split()[0]
    if len(names) != len(by_id):
        raise UserError(
            f"{len(names)} validation images in {val.path} but {len(by_id)} labels in {path}"
        )
    flat = {}
    for name in names:
        image_id = os.path.splitext(name)[0]
        if image_id not in by_id:
            raise UserError(f"{val.path}: {name} has no row in {path}")
        flat[name] = by_id[image_id]
    return flat, (path,)


def find_dataset(root: str, layout: str = "auto", *, flag: str = "--input_dir") -> Dataset:
    """Locates the splits, classes and validation labels of ``root`` (lists no images yet)."""
    if layout == "auto":
        layout = detect_layout(root, flag)
    elif layout not in LAYOUTS:
        raise UserError(f"layout {layout!r}: expected auto or one of {', '.join(LAYOUTS)}")
    elif not os.path.isdir(root):
        raise UserError(f"{flag}={root}: no such directory")
    train = _train_source(root, layout)
    val = _val_source(root, layout)
    wnids = _split_classes(train)
    if not wnids:
        raise UserError(f"{train.path}: no classes (expected one folder or tar per class)")

    names: dict[str, str] = {}
    names_file = ""
    flat_labels: dict[str, str] = {}
    label_files: tuple[str, ...] = ()
    if layout == "kaggle":
        names_file = os.path.join(root, KAGGLE_SYNSETS)
        if not os.path.isfile(names_file):
            raise UserError(f"{names_file}: missing (Kaggle's class names)")
        names = read_synset_mapping(names_file)
    elif os.path.isfile(os.path.join(root, SLIM_METADATA)):
        names_file = os.path.join(root, SLIM_METADATA)
        names = read_synset_mapping(names_file)

    if val.kind != "class_folders":
        image_names = [n for n, _, _ in _flat_names(val)]
        if not image_names:
            raise UserError(f"{val.path}: no .jpg/.jpeg/.png images")
        if layout == "kaggle":
            flat_labels, label_files = _kaggle_val_labels(root, image_names, val)
        elif layout == "ilsvrc2012":
            flat_labels, meta, label_files = _devkit_val_labels(root, image_names, val)
            names_file = label_files[1]
            names = {c.synset: c.text for c in meta.values()}
        else:
            raise UserError(
                f"{val.path} is a flat folder; its labels come with the ILSVRC2012 devkit or "
                f"Kaggle's {KAGGLE_SOLUTION}: use that layout, or sort it into <class>/ folders"
            )
    elif layout == "ilsvrc2012":
        try:
            meta = read_meta_mat(_find_devkit(root).meta_mat, META_MAT)
            names = {c.synset: c.text for c in meta.values()}
            names_file = META_MAT
        except UserError:
            pass  # class-folder validation needs no devkit; names are then the wnids

    if names:
        missing = [w for w in wnids if w not in names]
        if missing:
            raise UserError(
                f"wnid {missing[0]} ({train.path}) not in {names_file}"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            )
    classes = tuple(ClassLabel(w, names.get(w, w)) for w in wnids)
    known = set(wnids)
    for name, wnid in flat_labels.items():
        if wnid not in known:
            raise UserError(
                f"{val.path}: {name} is labelled {wnid} ({label_files[0]}), not a train class"
            )
    return Dataset(
        root, layout, classes, {"train": train, "validation": val}, flat_labels, label_files
    )


def list_images(dataset: Dataset, split: str) -> list[ImageSource]:
    """The images of a split, sorted by label then file name."""
    source = dataset.sources[split]
    labels = dataset.labels
    if source.kind in ("flat_folder", "flat_tar"):
        items = []
        for name, offset, size in _flat_names(source):
            path = source.path if offset >= 0 else os.path.join(source.path, name)
            items.append(ImageSource(path, name, labels[dataset.flat_labels[name]], offset, size))
        items.sort(key=lambda i: (i.label, i.name))
    else:
        items = _list_class_split(source, labels)
    if not items:
        raise UserError(f"{source.path}: no .jpg/.jpeg/.png images")
    return items


def has_tars(dataset: Dataset, split: str) -> bool:
    return dataset.sources[split].kind in ("class_tars", "tar_of_class_tars", "flat_tar")
