"""Downstream protocols: a linear probe learns separable features, few-shot subsets are seeded, the linear probe
leaves the backbone untouched and fine-tuning does not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facekit.nn.backbones import BACKBONES, DEFAULT_NORMALIZATION
from facekit.nn.downstream_heads import BackboneFeatures
from facekit.train.downstream import FrozenFeatures, ProtocolConfig, TaskData, few_shot_indices, run_protocol


def _coloured_faces(n: int, classes: int, seed: int = 0) -> TaskData:
    """Images whose class is the channel they are bright in: separable by the mean colour."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    images = rng.integers(0, 60, (n, 16, 16, 3)).astype(np.uint8)
    images[np.arange(n), :, :, labels] += 150
    split = np.where(np.arange(n) % 4 == 0, "test", "train")
    return TaskData("expression", images, labels.astype(np.int64), split, classes)


def _mean_colour(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1, 3).mean(1).astype(np.float32)


def test_a_linear_probe_on_separable_features_reaches_full_accuracy() -> None:
    data = _coloured_faces(48, 3)
    config = ProtocolConfig(epochs=40, batch_size=8, lr=1e-2)
    result = run_protocol(data, FrozenFeatures(_mean_colour, 3), DEFAULT_NORMALIZATION, config)
    truth = data.targets[result.test_index]
    assert (result.predictions == truth).mean() == 1.0
    assert (result.untrained == truth).mean() < 1.0 and result.losses[-1] < result.losses[0]


def test_few_shot_subsets_are_seeded() -> None:
    train = np.arange(100, 200)
    first = few_shot_indices(train, 0.1, seed=3)
    assert len(first) == 10 and set(first) <= set(train)
    np.testing.assert_array_equal(first, few_shot_indices(train, 0.1, seed=3))
    assert not np.array_equal(first, few_shot_indices(train, 0.1, seed=4))
    assert len(few_shot_indices(train, 0.001, seed=0)) == 1
    data = _coloured_faces(48, 3)
    config = ProtocolConfig(epochs=1, batch_size=8, few_shot=0.25, seed=5)
    result = run_protocol(data, FrozenFeatures(_mean_colour, 3), DEFAULT_NORMALIZATION, config)
    np.testing.assert_array_equal(result.train_index, few_shot_indices(np.flatnonzero(data.split == "train"), 0.25, 5))


def _trunk_task() -> tuple[TaskData, BackboneFeatures]:
    torch.manual_seed(0)
    trunk = BACKBONES.create("resnet18", channels=(4, 4, 8, 8))
    rng = np.random.default_rng(0)
    data = TaskData(
        "pose",
        rng.integers(0, 255, (12, 32, 32, 3)).astype(np.uint8),
        rng.uniform(-30, 30, (12, 3)).astype(np.float32),
        np.array(["train"] * 8 + ["test"] * 4),
        3,
    )
    return data, BackboneFeatures(trunk)


def test_the_linear_probe_leaves_the_backbone_and_its_batchnorm_statistics_untouched() -> None:
    data, encoder = _trunk_task()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    run_protocol(data, encoder, DEFAULT_NORMALIZATION, ProtocolConfig(epochs=2, batch_size=4))
    for key, value in encoder.state_dict().items():
        torch.testing.assert_close(value, before[key], msg=key)


def test_fine_tuning_trains_the_backbone() -> None:
    data, encoder = _trunk_task()
    before = encoder.backbone.conv1.weight.detach().clone()
    result = run_protocol(data, encoder, DEFAULT_NORMALIZATION, ProtocolConfig("finetune", epochs=2, batch_size=4))
    assert not torch.equal(encoder.backbone.conv1.weight, before)
    assert result.predictions.shape == (4, 3) and result.predictions.dtype == np.float32


def test_an_embedding_only_model_cannot_be_fine_tuned_and_splits_are_needed() -> None:
    data = _coloured_faces(12, 3)
    with pytest.raises(ValueError, match="only be linear-probed"):
        run_protocol(data, FrozenFeatures(_mean_colour, 3), DEFAULT_NORMALIZATION, ProtocolConfig("finetune"))
    no_test = TaskData(data.task, data.images, data.targets, np.full(12, "train"), 3)
    with pytest.raises(ValueError, match="needs train and test items"):
        run_protocol(no_test, FrozenFeatures(_mean_colour, 3), DEFAULT_NORMALIZATION, ProtocolConfig())
    with pytest.raises(ValueError, match="few_shot"):
        ProtocolConfig(few_shot=0.0)
