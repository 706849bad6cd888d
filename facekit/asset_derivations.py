"""Asset files that no public URL serves, rebuilt from public inputs: the deepface pair and identity
lists (from deepface's pivot CSV) and the CelebA annotation cuts (from the full CelebA files).

Each function of :data:`DERIVERS` takes the manifest entry's input texts and every manifest path, and
returns the derived file's text, byte for byte the file whose sha256 the manifest pins.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable


def _pivot_pairs(pivot_csv: str) -> list[tuple[str, str, bool]]:
    """(file_x, file_y, same) from deepface's face-recognition-pivot.csv, file names without folders."""
    rows = csv.DictReader(io.StringIO(pivot_csv))
    return [
        (row["file_x"].rsplit("/", 1)[-1], row["file_y"].rsplit("/", 1)[-1], row["decision"] == "Yes") for row in rows
    ]


def _derive_deepface_pairs(pivot_csv: str) -> str:
    """pairs.csv: ``file_x,file_y,same`` with same = 1 for the pivot's "Yes" decisions."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["file_x", "file_y", "same"])
    writer.writerows((x, y, int(same)) for x, y, same in _pivot_pairs(pivot_csv))
    return out.getvalue()


def _derive_deepface_identities(pivot_csv: str) -> str:
    """identities.csv: ``file,identity_id``; identities are connected components of the same pairs,
    numbered in order of their lowest image number, files listed by image number."""
    parent: dict[str, str] = {}

    def find(name: str) -> str:
        while parent.setdefault(name, name) != name:
            name = parent[name]
        return name

    for x, y, same in _pivot_pairs(pivot_csv):
        root_x, root_y = find(x), find(y)
        if same:
            parent[root_x] = root_y
    groups: dict[str, list[str]] = {}
    for name in parent:
        groups.setdefault(find(name), []).append(name)

    def number(name: str) -> int:
        digits = re.search(r"\d+", name)
        if digits is None:
            raise ValueError(f"no image number in {name!r}")
        return int(digits.group())

    ordered = sorted((sorted(group, key=number) for group in groups.values()), key=lambda g: number(g[0]))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["file", "identity_id"])
    writer.writerows((name, identity) for identity, group in enumerate(ordered) for name in group)
    return out.getvalue()


#: CelebA photo folders whose annotation files are cut from CelebA's full files.
_CELEBA_MEDIUM_DIR = "faces/celeba_medium/"
_CELEBA_DOWNSTREAM_IMAGES = "downstream/celeba/Img/img_celeba/"


def _celeba_rows(annotation_txt: str) -> dict[str, str]:
    """The lines of a CelebA annotation file (``<nnnnnn>.jpg <fields>``) by file name, without line ends;
    count and header lines are skipped."""
    rows = {}
    for line in annotation_txt.splitlines():
        fields = line.split(maxsplit=1)
        if fields and fields[0].endswith(".jpg"):
            rows[fields[0]] = line
    return rows


def _photos_in(listed: list[str], folder: str) -> list[str]:
    """The manifest's ``.jpg`` paths under ``folder``, relative to it, sorted."""
    return sorted(path.removeprefix(folder) for path in listed if path.startswith(folder) and path.endswith(".jpg"))


def _derive_celeba_medium_identities(identity_txt: str, listed: list[str]) -> str:
    """identities.csv: ``file,identity`` for every photo of the manifest under faces/celeba_medium/, by path;
    identity = ``celeba_<number>`` from CelebA's identity_CelebA.txt, which must name the photo's folder."""
    labels = _celeba_rows(identity_txt)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["file", "identity"])
    for relative in _photos_in(listed, _CELEBA_MEDIUM_DIR):
        folder, name = relative.split("/")
        identity = "celeba_" + labels[name].split()[1]
        if folder != identity:
            raise ValueError(f"{relative} is labelled {identity} in identity_CelebA.txt")
        writer.writerow([relative, identity])
    return out.getvalue()


def _derive_celeba_identity_rows(identity_txt: str, listed: list[str]) -> str:
    """Anno/identity_CelebA.txt in CelebA's layout (no header): the rows of the downstream photos."""
    rows = _celeba_rows(identity_txt)
    return "".join(rows[name] + "\n" for name in _photos_in(listed, _CELEBA_DOWNSTREAM_IMAGES))


def _derive_celeba_attr_rows(attr_txt: str, listed: list[str]) -> str:
    """Anno/list_attr_celeba.txt in CelebA's layout: the row count, the attribute-name line (kept byte for
    byte, trailing space included), then the rows of the downstream photos; LF line ends."""
    header = attr_txt.splitlines()[1]
    rows = _celeba_rows(attr_txt)
    names = _photos_in(listed, _CELEBA_DOWNSTREAM_IMAGES)
    return "\n".join([str(len(names)), header, *(rows[name] for name in names)]) + "\n"


#: name -> function(input texts, every manifest path) -> the derived file's text.
DERIVERS: dict[str, Callable[[list[str], list[str]], str]] = {
    "deepface_pairs": lambda texts, _listed: _derive_deepface_pairs(*texts),
    "deepface_identities": lambda texts, _listed: _derive_deepface_identities(*texts),
    "celeba_medium_identities": lambda texts, listed: _derive_celeba_medium_identities(*texts, listed),
    "celeba_identity_rows": lambda texts, listed: _derive_celeba_identity_rows(*texts, listed),
    "celeba_attr_rows": lambda texts, listed: _derive_celeba_attr_rows(*texts, listed),
}
