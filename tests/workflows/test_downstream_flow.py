"""The ``evaluate-downstream`` deployment: listed in prefect.yaml, its entrypoint a flow that reproduces the lineage."""

from __future__ import annotations

import importlib
from pathlib import Path

import yaml
from prefect import Flow

ROOT = Path(__file__).resolve().parents[2]


def test_evaluate_downstream_is_a_deployment_of_its_flow() -> None:
    deployments = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    (entry,) = [d for d in deployments if d["name"] == "evaluate-downstream"]
    path, name = entry["entrypoint"].split(":")
    flow = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name)
    assert isinstance(flow, Flow) and flow.name == "evaluate-downstream"
    assert flow.fn.__defaults__ == ("lineages/downstream",) and (ROOT / "lineages/downstream/dvc.yaml").is_file()
