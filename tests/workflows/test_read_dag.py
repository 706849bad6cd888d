"""The full-chain flow's DAG is one pipeline file's stages and what they depend on, never the whole repo."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from workflows.full_chain import read_dag


@pytest.fixture
def two_pipelines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git + DVC repo, the working directory (as for the flow): the root dvc.yaml (a -> b) and sub/dvc.yaml
    (c, which reads b's output; d)."""
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=tmp_path, check=True)
    root = {
        "a": {"cmd": "echo a > a.txt", "outs": ["a.txt"]},
        "b": {"cmd": "cat a.txt > b.txt", "deps": ["a.txt"], "outs": ["b.txt"]},
    }
    sub = {
        "c": {"cmd": "cat ../b.txt > c.txt", "deps": ["../b.txt"], "outs": ["c.txt"]},
        "d": {"cmd": "echo d > d.txt", "outs": ["d.txt"]},
    }
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": root}))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub/dvc.yaml").write_text(yaml.safe_dump({"stages": sub}))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_root_pipeline_leaves_other_lineages_alone(two_pipelines: Path) -> None:
    order, upstream, stale = read_dag()
    assert order == ["a", "b"] and upstream == {"a": [], "b": ["a"]} and stale == {"a", "b"}


def test_a_lineage_brings_the_stages_it_depends_on(two_pipelines: Path) -> None:
    order, upstream, _ = read_dag(pipeline="sub/dvc.yaml")
    assert set(order) == {"a", "b", "sub/dvc.yaml:c", "sub/dvc.yaml:d"}
    assert order.index("a") < order.index("b") < order.index("sub/dvc.yaml:c")
    assert upstream["sub/dvc.yaml:c"] == ["b"]


def test_a_file_without_stages_is_named(two_pipelines: Path) -> None:
    with pytest.raises(ValueError, match=r"other/dvc.yaml: no pipeline stages there"):
        read_dag(pipeline="other/dvc.yaml")
