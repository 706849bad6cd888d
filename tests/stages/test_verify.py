"""The ``verify`` stage on the real sample: the external reference model scores the verification sets as it
scores the raw photos."""

from __future__ import annotations

import json
from pathlib import Path

from facekit.config import load_params
from facekit.stages import eval_sets, verify


def test_reference_model_scores_the_sets_as_on_the_raw_photos(in_project: Path) -> None:
    params = load_params()
    eval_sets.run(params, params.paths)
    line = verify.run(params, params.paths, "reference")
    scores = json.loads(Path("metrics/verify/reference.json").read_text())
    assert scores["sample"]["accuracy"] >= 0.97  # MobileFaceNet on the aligned sample: ≈0.99
    assert 0.8 <= scores["sample_masked"]["accuracy"] <= scores["sample"]["accuracy"]
    assert f"sample {scores['sample']['accuracy']:.4f}" in line
    assert Path("plots/verify/reference/roc_sample.csv").is_file() and Path("plots/verify/reference/roc.png").is_file()
