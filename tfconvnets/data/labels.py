"""``labels.txt``: the class of each label, one line per label, line i naming label i (1-based).

Each line is ``<synset><TAB><human-readable name>``, e.g. ``n01440764<TAB>tench, Tinca tinca``
(the format of TF-slim's ``imagenet_metadata.txt``). Older files, one name per line without a
tab, still parse: the whole line is then both the synset and the name.
"""

from __future__ import annotations

import dataclasses
import os

from tfconvnets.errors import UserError

LABELS_FILE = "labels.txt"


@dataclasses.dataclass(frozen=True)
class ClassLabel:
    synset: str  # WordNet ID (n01440764) or class folder name
    text: str  # human-readable name (tench, Tinca tinca); the synset when none is known


def format_labels(classes: list[ClassLabel]) -> str:
    for c in classes:
        if "\t" in c.synset or "\n" in c.synset or "\n" in c.text:
            raise UserError(f"class {c.synset!r}: tabs and newlines cannot go into {LABELS_FILE}")
    return "".join(f"{c.synset}\t{c.text}\n" for c in classes)


def parse_labels(text: str) -> list[ClassLabel]:
    classes = []
    for line in text.splitlines():
        synset, tab, name = line.partition("\t")
        classes.append(ClassLabel(synset, name.strip() if tab else synset))
    return classes


def read_labels(path: str) -> list[ClassLabel]:
    """The classes of a ``labels.txt``; entry i-1 is label i."""
    try:
        with open(path, encoding="utf-8") as f:
            return parse_labels(f.read())
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read ({e})") from None


def class_names(directory: str, num_classes: int) -> list[str] | None:
    """Human-readable names (index = 0-based label) from ``directory/labels.txt``.

    None if the file is missing or holds another number of classes.
    """
    path = os.path.join(directory, LABELS_FILE)
    if not os.path.isfile(path):
        return None
    classes = read_labels(path)
    if len(classes) != num_classes:
        return None
    return [c.text for c in classes]
