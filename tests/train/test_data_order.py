import csv
import random

import numpy as np
import torch
from torch.utils.data import Dataset

from facekit.train.metrics_log import MetricsLogger
from facekit.train.samplers import EpochSampler, SeededSamples


class Draws(Dataset):
    """Item ``i`` is ``(i, draws from python random, np.random, torch)``."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int) -> tuple[int, float, float, float]:
        return i, random.random(), float(np.random.rand()), float(torch.rand(()))


def test_epoch_sampler_splits_a_seeded_permutation_across_ranks_and_resumes() -> None:
    ranks = [EpochSampler(11, seed=3, rank=r, world=2) for r in range(2)]
    for s in ranks:
        s.set_epoch(1)
    order = np.random.default_rng([3, 1]).permutation(11)
    assert [list(s) for s in ranks] == [[(1, int(i)) for i in order[r:10:2]] for r in range(2)]
    ranks[1].set_epoch(1, start=3)
    assert len(ranks[1]) == 2 and [i for _, i in ranks[1]] == order[7:10:2].tolist()
    other_epoch = EpochSampler(11, seed=3)
    other_epoch.set_epoch(2)
    assert [i for _, i in other_epoch] != order[:11].tolist()


def test_seeded_samples_depend_on_seed_epoch_index_only_and_leave_global_rngs_alone() -> None:
    samples = SeededSamples(Draws(), seed=7)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    batch = samples.__getitems__([(0, 4), (1, 4), (0, 5)])
    assert torch.equal(torch.get_rng_state(), before)
    assert samples[(0, 4)] == batch[0] and samples[(1, 4)] == batch[1]
    assert len({item[1:] for item in batch}) == 3  # another epoch or index: other draws
    assert SeededSamples(Draws(), seed=8)[(0, 4)] != batch[0]


def test_metrics_logger_drops_rows_after_the_resume_step_and_torn_lines(tmp_path) -> None:
    logger = MetricsLogger(tmp_path)
    for step in range(4):
        logger.log({"step": step, "epoch": step / 4, "loss": 1.0 / (step + 1)})
    logger.close()
    with (tmp_path / "train_log.csv").open("a") as f:
        f.write("1")  # a row ("12,3.0,...") torn by a kill after its first character
    resumed = MetricsLogger(tmp_path, resume_step=2)
    assert resumed.last_row == {"step": "1", "epoch": "0.25", "loss": "0.5"}
    resumed.log({"step": 2, "epoch": 0.5, "loss": 0.125})
    resumed.write_summary({"final_loss": float("nan"), "steps": 3}, {"images_per_s": float("inf")})
    resumed.close()
    with (tmp_path / "train_log.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["step"], r["loss"]) for r in rows] == [("0", "1.0"), ("1", "0.5"), ("2", "0.125")]
    assert (tmp_path / "metrics.json").read_text() == '{\n  "final_loss": null,\n  "steps": 3\n}\n'
    assert (tmp_path / "timing.json").read_text() == '{\n  "images_per_s": null\n}\n'
