"""Partial FC: full-FC equivalence at sample rate 1, positive-keeping sampling, and 2-process sharding (gloo).

Run as a script under torchrun, this file is the DDP worker of the last test.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from facekit.nn.margins import MARGINS, ArcFace
from facekit.nn.partial_fc import PartialFC, sharded_cross_entropy

C, D, B = 11, 8, 6  # classes, embedding size, per-rank batch (the DDP test gathers 2 × B)


def global_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(centres [C, D], embeddings [2B, D] with norms ~7..90 (across MagFace's clamp), labels [2B]); rank-free."""
    g = torch.Generator().manual_seed(7)
    weight = torch.randn(C, D, generator=g)
    emb = torch.randn(2 * B, D, generator=g) * torch.linspace(3, 20, 2 * B)[:, None]
    labels = torch.tensor([0, 3, 3, 10, 5, 1, 9, 4, 0, 7, 2, 6])
    return weight, emb, labels


def full_fc(
    name: str, weight: torch.Tensor, emb: torch.Tensor, labels: torch.Tensor
) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Reference: a plain full-FC margin head on the whole batch -> (loss dict, emb grad, weight grad)."""
    head = MARGINS.create(name, embedding_size=D, num_classes=C)
    head.weight.data.copy_(weight)
    emb = emb.clone().requires_grad_(True)
    out = head.loss(emb, labels)
    out["loss"].backward()
    return out, emb.grad, head.weight.grad


@pytest.mark.parametrize("name", ["arcface", "cosface", "curricularface", "magface"])
def test_sample_rate_one_equals_the_full_fc(name: str) -> None:
    weight, emb, labels = global_batch()
    want, emb_grad, weight_grad = full_fc(name, weight, emb, labels)
    pfc = PartialFC(MARGINS.create(name), C, D, sample_rate=1.0)
    pfc.weight.data.copy_(weight)
    emb = emb.clone().requires_grad_(True)
    out = pfc(emb, labels)
    out["loss"].backward()
    assert out.keys() == want.keys()
    for key in out:
        torch.testing.assert_close(out[key], want[key], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(emb.grad, emb_grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(pfc.weight.grad, weight_grad, atol=1e-6, rtol=1e-5)


def test_sharded_cross_entropy_is_cross_entropy_in_one_process() -> None:
    torch.manual_seed(0)
    logits = (torch.randn(5, 7) * 40).requires_grad_(True)  # large logits: no overflow
    labels = torch.tensor([0, 6, 3, 3, 1])
    ours = sharded_cross_entropy(logits, labels)
    (grad,) = torch.autograd.grad(ours, logits)
    ref_logits = logits.detach().clone().requires_grad_(True)
    ref = F.cross_entropy(ref_logits, labels)
    ref.backward()
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(grad, ref_logits.grad)


def test_sampling_keeps_every_positive_and_takes_ceil_rate_times_c_centres() -> None:
    torch.manual_seed(0)
    pfc = PartialFC(ArcFace(), 95, D, sample_rate=0.1)
    labels = torch.tensor([3, 50, 94, 50, 0])
    for _ in range(5):
        index, columns = pfc.sample(labels)
        assert index.numel() == math.ceil(0.1 * 95) == 10
        assert torch.equal(index, index.unique())  # sorted, no repeats
        assert set(labels.tolist()) <= set(index.tolist())
        assert torch.equal(index[columns], labels)
    many = torch.arange(0, 95, 7)  # 14 positives > 10: all positives, nothing else
    index, columns = pfc.sample(many)
    assert torch.equal(index, many) and torch.equal(columns, torch.arange(14))


def test_sampled_loss_is_the_margin_softmax_over_the_sampled_centres() -> None:
    torch.manual_seed(1)
    pfc = PartialFC(ArcFace(), 40, D, sample_rate=0.25)
    emb, labels = torch.randn(4, D) * 5, torch.tensor([2, 17, 17, 33])
    torch.manual_seed(3)
    index, columns = pfc.sample(labels)
    torch.manual_seed(3)
    out = pfc(emb, labels)
    out["loss"].backward()
    cos = F.normalize(emb) @ F.normalize(pfc.weight.detach()[index]).T
    want = F.cross_entropy(ArcFace().margin(cos, columns, emb.norm(dim=1)), columns)
    torch.testing.assert_close(out["loss"], want, atol=1e-5, rtol=1e-5)
    unsampled = torch.ones(40, dtype=torch.bool)
    unsampled[index] = False
    assert pfc.weight.grad[unsampled].abs().sum() == 0 and pfc.weight.grad[index].abs().sum() > 0


def test_bad_labels_and_heads_are_named() -> None:
    pfc = PartialFC(ArcFace(), 10, D)
    for labels in ([-1, 4, 5], [0, 4, 10]):  # checked on the device, without a host read (CPU: at once)
        with pytest.raises(RuntimeError, match=r"identity labels must lie in \[0, 10\)"):
            pfc(torch.randn(3, D), torch.tensor(labels))
    pfc(torch.randn(3, D), torch.tensor([0, 4, 9]))
    with pytest.raises(ValueError, match="without num_classes"):
        PartialFC(ArcFace(D, 10), 10, D)
    with pytest.raises(ValueError, match="sample_rate"):
        PartialFC(ArcFace(), 10, D, sample_rate=0.0)


def test_two_ranks_with_sharded_centres_match_one_process(tmp_path: Path) -> None:
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([*launch, str(tmp_path)], env=env, check=True, timeout=300)
    weight, emb, labels = global_batch()
    for name in ("magface", "curricularface"):
        want, emb_grad, weight_grad = full_fc(name, weight, emb, labels)
        ranks = [torch.load(tmp_path / f"{name}_rank{r}.pt") for r in range(2)]
        assert [r["class_start"] for r in ranks] == [0, 6] and [r["weight_grad"].shape[0] for r in ranks] == [6, 5]
        for r, got in enumerate(ranks):
            torch.testing.assert_close(got["ce"], want["ce"], atol=1e-5, rtol=1e-5)  # the same CE on every rank
            rows = slice(got["class_start"], got["class_start"] + got["weight_grad"].shape[0])
            torch.testing.assert_close(got["weight_grad"], weight_grad[rows], atol=1e-6, rtol=1e-5)
            # ×2 = world size: DDP's averaging of the backbone gradients brings it back to the 1-process value
            torch.testing.assert_close(got["emb_grad"], 2 * emb_grad[r * B : (r + 1) * B], atol=1e-6, rtol=1e-5)
        mean_loss = (ranks[0]["loss"] + ranks[1]["loss"]) / 2  # the loop logs the mean over ranks
        torch.testing.assert_close(mean_loss, want["loss"], atol=1e-5, rtol=1e-5)
        if name == "curricularface":
            assert ranks[0]["t"] == ranks[1]["t"] == pytest.approx(0.01 * _mean_target_cos(weight, emb, labels))


def _mean_target_cos(weight: torch.Tensor, emb: torch.Tensor, labels: torch.Tensor) -> float:
    return float((F.normalize(emb) * F.normalize(weight)[labels]).sum(dim=1).mean())


def _ddp_worker(out_dir: Path) -> None:
    """One rank: PartialFC over its shard of the centres, fed its half of the global batch."""
    from facekit import distributed

    distributed.init_from_env()
    rank = distributed.rank()
    weight, emb, labels = global_batch()
    for name in ("magface", "curricularface"):
        pfc = PartialFC(MARGINS.create(name), C, D, sample_rate=1.0)
        pfc.weight.data.copy_(weight[pfc.class_start : pfc.class_start + pfc.num_local])
        local = emb[rank * B : (rank + 1) * B].clone().requires_grad_(True)
        out = pfc(local, labels[rank * B : (rank + 1) * B])
        out["loss"].backward()
        result = {
            "loss": out["loss"].detach(),
            "ce": out["ce"].detach(),
            "emb_grad": local.grad,
            "weight_grad": pfc.weight.grad,
            "class_start": pfc.class_start,
            "t": float(getattr(pfc.margin_head, "t", torch.zeros(()))),
        }
        torch.save(result, out_dir / f"{name}_rank{rank}.pt")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    _ddp_worker(Path(sys.argv[1]))
