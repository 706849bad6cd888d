"""The registry of downstream readers: every dataset named, each with its task and classes or landmark count."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from facekit.data.downstream import READERS, TASKS


def test_every_dataset_has_a_reader_of_its_task() -> None:
    tasks = {name: reader.task for name, reader in READERS.items()}
    assert tasks == {
        "rafdb": "expression", "ferplus": "expression", "affectnet": "expression", "affectnet7": "expression",
        "celeba": "attributes", "lfwa": "attributes",
        "300w": "alignment", "300vw": "alignment", "wflw": "alignment", "aflw19": "alignment", "cofw": "alignment",
        "lapa_landmarks": "alignment",
        "lapa": "parsing", "celebamask_hq": "parsing",
        "aflw2000_3d": "pose", "300w_lp": "pose", "biwi": "pose",
    }  # fmt: skip
    assert set(tasks.values()) == set(TASKS)
    assert all(reader.name == name for name, reader in READERS.items())
    counts = {name: reader.landmarks for name, reader in READERS.items() if reader.task == "alignment"}
    assert counts == {"300w": 68, "300vw": 68, "wflw": 98, "aflw19": 19, "cofw": 29, "lapa_landmarks": 106}
    sizes = {name: len(reader.classes) for name, reader in READERS.items() if reader.task != "alignment"}
    assert sizes == {
        "rafdb": 7, "ferplus": 8, "affectnet": 8, "affectnet7": 7, "celeba": 40, "lfwa": 40, "lapa": 11,
        "celebamask_hq": 19, "aflw2000_3d": 3, "300w_lp": 3, "biwi": 3,
    }  # fmt: skip


@pytest.mark.parametrize("name", sorted(READERS))
def test_a_missing_or_empty_root_is_one_clear_error(tmp_path: Path, name: str) -> None:
    for root in (tmp_path / "nowhere", tmp_path):
        with pytest.raises(FileNotFoundError, match=re.escape(str(root))):
            READERS[name].read(root)
