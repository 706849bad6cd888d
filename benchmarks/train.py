"""Training-step images/s and MFU (model FLOP utilisation) of every registered training method.

For each method of :data:`facekit.methods.base.METHODS` (new ones appear automatically; one that fails to
build or run prints an ``ERROR`` row) and each backbone configuration:

- a synthetic batch: ``method.views()`` applied to random 112 x 112 uint8 faces (called with a synthetic
  :class:`~facekit.data.record.FaceRecord`, masked twin and dense landmarks included, when the view
  ``takes_record``), collated with ``identity``, ``landmarks`` and ``key`` as FaceShardDataset's items,
  kept on the device (data loading is not measured); ``num_classes`` = 1000 where a method requires it;
- FLOPs of one step's forward + backward counted by ``torch.utils.flop_counter.FlopCounterMode``
  (matmuls, convolutions and attention, 2 FLOP per multiply-add; that step is the first warm-up);
- images/s: ``batch / median step time`` over ``--steps`` steps after ``--warmup`` more, each step as
  the engine's: zero_grad, forward (bf16 autocast with ``--dtype bf16``), backward,
  ``before_optimizer_step``, the engine's optimizer (timm AdamW, :func:`~facekit.train.optim.build_optimizer`),
  ``after_step`` (EMA updates); not the loop's grad-norm / non-finite check. Scheduled values are
  those of step 0 (only ``hp.step`` advances). CUDA steps are timed with CUDA events, synchronised;
- MFU = achieved FLOP/s / peak FLOP/s. Peak on CUDA: ``--peak-tflops`` (default 790, H100 bf16 dense
  achievable, as in docs/performance.md; MFU against the 989 spec figure is printed too). On CPU the peak
  is measured in this run: the best of three ``torch.mm`` of two 4096 x 4096 matrices in the run's
  dtype, before and after the methods (the higher is used).

Configurations: ViT-S/16 @224 (CPU) or ViT-B/16 @224 (CUDA) for every method (a method whose default
backbone is not a facekit ViT, e.g. FRA's ResNet-50, runs its own default instead), plus FaceT-B @112
for facet_mae. ``--configs`` runs the named ones for every selected method. A FLOP check against
docs/performance.md (ViT-B/16 all tokens 105.1, MAE ViT-B/16 58.5, FaceT-B MAE 57.8 GFLOP/img) is
counted on the meta device and printed first.

    python benchmarks/train.py [--methods mae,mcf] [--batch 4] [--steps 2]
    python benchmarks/train.py --device cuda --dtype bf16 [--batch 256] [--compile]

Ends with ``speedup=<MAE MFU / 0.45> goal=1`` on CUDA (the goal: MAE ViT-B/16 at >= 45% MFU of 790
TFLOP/s, about 6k images/s on an H100), and ``speedup=<MAE achieved FLOP/s / measured CPU matmul peak>
goal=0.45`` on CPU (without mae selected, the first method measured).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import inspect
import itertools
import re
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils.flop_counter as flop_counter
from torch.utils.data import default_collate
from torch.utils.flop_counter import FlopCounterMode

import facekit.methods  # noqa: F401  (registers the methods)
from facekit.config import TrainConfig
from facekit.config.train import COMPILE_MODES
from facekit.data.images import encode_jpeg
from facekit.data.ops.align import ARCFACE_TEMPLATE
from facekit.data.record import FaceRecord
from facekit.methods.base import METHODS, Method, StepValues
from facekit.nn.backbones import BACKBONES
from facekit.train.optim import build_optimizer
from facekit.train.step import TrainStep, prepare_model, to_device

GOAL_MFU = 0.45
H100_BF16_ACHIEVABLE, H100_BF16_SPEC = 790.0, 989.0  # TFLOP/s, dense
FACE_SIZE = 112  # aligned faces as packed in the shards
NUM_CLASSES = 1000  # identities given to methods that require ``num_classes`` (fine-tuning)
FACET_KWARGS: dict[str, Any] = {"backbone": "facet_base", "backbone_kwargs": {"num_prompts": 0, "head_dim": None}}


@dataclass(frozen=True)
class BackboneConfig:
    """A named backbone choice: ``kwargs`` go to ``METHODS.create`` next to the method's defaults."""

    label: str
    kwargs: dict[str, Any]  # passed to METHODS.create
    only: tuple[str, ...] | None = None  # methods it runs for by default (None = all)


CONFIGS = {
    "vit_s": BackboneConfig("ViT-S/16@224", {"backbone": "vit_small_patch16_224"}),
    "vit_b": BackboneConfig("ViT-B/16@224", {"backbone": "vit_base_patch16_224"}),
    "facet_b": BackboneConfig("FaceT-B@112", FACET_KWARGS, only=("facet_mae",)),
}


@dataclass(frozen=True)
class Row:
    """One measured (method, config): FLOPs per image of fwd + bwd and training images/s."""

    method: str
    config: str
    batch: int
    flops_per_image: float
    images_per_s: float

    @property
    def achieved(self) -> float:
        """FLOP/s."""
        return self.flops_per_image * self.images_per_s


def _sdpa_cpu_forward(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return flop_counter.sdpa_flop_count(query, key, value)


def _sdpa_cpu_backward(
    grad_out: Any, query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any
) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)


def flop_counter_mode() -> FlopCounterMode:
    """FlopCounterMode that also counts CPU flash attention (torch counts only the CUDA kernels).

    Attention backward is counted as torch counts its fused kernels (2.5x forward, scores recomputed);
    the math path (bmm, as on the meta device) counts 2x.
    """
    aten = torch.ops.aten
    mapping = {
        aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_forward,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward,
    }
    return FlopCounterMode(display=False, custom_mapping=mapping)


def synthetic_record(rng: np.random.Generator, index: int) -> tuple[np.ndarray, FaceRecord]:
    """A random 112 x 112 face and its record: JPEG, ArcFace-template landmarks, a masked twin and
    random 468-point dense landmarks (for views that read the record, e.g. LAFS's mesh, masked swaps)."""
    rgb = rng.integers(0, 256, (FACE_SIZE, FACE_SIZE, 3), dtype=np.uint8)
    twin = rng.integers(0, 256, (FACE_SIZE, FACE_SIZE, 3), dtype=np.uint8)
    record = FaceRecord(
        key=f"synthetic/{index:06d}",
        image=encode_jpeg(rgb[..., ::-1].copy()),
        identity=index,
        landmarks=ARCFACE_TEMPLATE.astype(np.float32),
        bbox=np.array([0, 0, FACE_SIZE, FACE_SIZE], np.float32),
        det_score=1.0,
        num_faces=1,
        source="synthetic",
        source_sha256="0" * 64,
        mask="surgical",
        masked_image=encode_jpeg(twin),
        extra={"dense_landmarks": rng.uniform(8, FACE_SIZE - 8, (468, 2)).astype(np.float16)},
    )
    return rgb, record


def synthetic_batch(view: Callable[..., Any], batch: int, num_classes: int, seed: int = 0) -> dict[str, Any]:
    """``batch`` dataset items (random faces through the method's view, called as FaceShardDataset does),
    identities ``i % num_classes``, collated like the loader's batches."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(batch):
        rgb, record = synthetic_record(rng, i % num_classes)
        out = view(rgb, record) if getattr(view, "takes_record", False) else view(rgb)
        item: dict[str, Any] = {"identity": record.identity, "landmarks": torch.from_numpy(record.landmarks)}
        item["key"] = record.key
        item.update(out if isinstance(out, dict) else {"image": out})
        items.append(item)
    return default_collate(items)


def build_method(name: str, config: BackboneConfig, args: argparse.Namespace | None = None) -> Method:
    """``METHODS.create(name, **config.kwargs)``, with ``num_classes`` filled in where it is required and
    ``photometric`` (``--photometric``) where the method takes it (multi-crop)."""
    params = inspect.signature(METHODS.get(name)).parameters
    required = params.get("num_classes")
    extra: dict[str, Any] = {}
    if required is not None and required.default is required.empty:
        extra["num_classes"] = NUM_CLASSES
    if "photometric" in params and args is not None:
        extra["photometric"] = args.photometric
    return METHODS.create(name, **config.kwargs, **extra)


def native_config(name: str) -> BackboneConfig | None:
    """The method's own default build when its default backbone is none of :data:`CONFIGS`' (e.g. FRA's
    ResNet-50, which takes no ViT)."""
    param = inspect.signature(METHODS.get(name)).parameters.get("backbone")
    default = None if param is None else param.default
    if isinstance(default, str) and default not in {c.kwargs["backbone"] for c in CONFIGS.values()}:
        return BackboneConfig(f"{default} (own)", {})
    return None


def step_values(method: Method, total_steps: int) -> StepValues:
    """Step-0 values of a ``total_steps`` schedule (method extras included); steps vary only ``step``,
    so a compiled method is not re-specialised on changing floats."""
    extra = {name: float(values[0]) for name, values in method.schedules(total_steps, total_steps).items()}
    return StepValues(0, 0.0, 0.0, lr=1e-4, weight_decay=0.05, momentum=0.996, extra=extra)


def train_flops(method: Method, batch: dict[str, Any], hp: StepValues, amp: bool) -> float:
    """FLOPs of one forward + backward of ``method`` on ``batch`` (gradients are left in place)."""
    counter = flop_counter_mode()
    device_type = next(v for v in batch.values() if isinstance(v, torch.Tensor)).device.type
    with counter:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp):
            loss = method(batch, hp)["loss"]
        loss.backward()
    return float(counter.get_total_flops())


def engine_step(method: Method, args: argparse.Namespace, device: torch.device) -> TrainStep:
    """The engine's :class:`TrainStep` for ``method`` (on ``device``) with the run's speed settings."""
    cfg = TrainConfig(
        epochs=1, batch_size=args.batch, out_dir=Path("."), lr=1e-4, progress=False, amp=args.dtype == "bf16",
        compile=args.compile, fused_optimizer=args.fused, channels_last=args.channels_last, log_every=args.log_every,
    )  # fmt: skip
    model, ddp = prepare_model(method, cfg, device)
    return TrainStep(method, model, ddp, build_optimizer(method, cfg, cfg.lr), cfg, device)


def timed_steps(
    step: TrainStep, batches: Iterator[Any], hp: StepValues, steps: range, device: torch.device
) -> list[float]:
    """Seconds per step over ``steps`` (one batch each from ``batches``), each a whole engine step with the log
    window drained every ``log_every`` steps as the loop does. CUDA: events between steps, synchronised."""

    def one(i: int) -> None:
        step([next(batches)], dataclasses.replace(hp, step=i))
        if (i + 1) % step.cfg.log_every == 0:
            step.drain()

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        events = [torch.cuda.Event(enable_timing=True) for _ in range(len(steps) + 1)]
        events[0].record()
        for i, event in zip(steps, events[1:], strict=True):
            one(i)
            event.record()
        torch.cuda.synchronize(device)
        return [a.elapsed_time(b) / 1e3 for a, b in itertools.pairwise(events)]
    times = []
    for i in steps:
        start = time.perf_counter()
        one(i)
        times.append(time.perf_counter() - start)
    return times


def measure(name: str, config: BackboneConfig, args: argparse.Namespace, device: torch.device) -> Row:
    """Build ``name`` with ``config``, count one step's FLOPs, time ``args.steps`` engine steps on a synthetic
    batch kept on the device; with ``--profile``, profile a few more."""
    torch.manual_seed(0)
    method = build_method(name, config, args).to(device).train()
    batch = to_device(synthetic_batch(method.views(), args.batch, NUM_CLASSES), device)
    hp = step_values(method, args.warmup + args.steps + 1)
    flops = train_flops(method, batch, hp, args.dtype == "bf16")
    step = engine_step(method, args, device)
    for i in range(args.warmup):
        step([batch], dataclasses.replace(hp, step=i))
    times = timed_steps(step, itertools.repeat(batch), hp, range(args.warmup, args.warmup + args.steps), device)
    if args.profile is not None:
        label = re.sub(r"[^\w.-]", "", config.label.split("@")[0])  # ViT-S16, FaceT-B, resnet50own
        profile_steps(step, batch, hp, args.profile / f"{name}_{label}", device)
    return Row(name, config.label, args.batch, flops / args.batch, args.batch / statistics.median(times))


#: kinds of work, matched in order against profiled op and kernel names (lower case); the rest is "other"
WORK_KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("attention", ("attention", "flash", "fmha", "sdpa", "softmax")),
    ("optimizer", ("adam", "multi_tensor", "foreach", "lars")),
    ("convolution", ("conv", "cudnn", "winograd")),
    ("matmul", ("gemm", "mm", "matmul", "linear", "cublas", "cutlass", "xmma")),
    ("norm", ("norm",)),
    ("copy", ("copy", "memcpy", "memset", "clone", "contiguous", "cat", "stack", "fill", "zero")),
    ("indexing", ("index", "gather", "scatter", "sort", "topk", "take", "where")),
)


def work_kind(name: str) -> str:
    """The :data:`WORK_KINDS` kind of a profiled op or kernel name."""
    lower = name.lower()
    return next((kind for kind, words in WORK_KINDS if any(w in lower for w in words)), "other")


def profile_steps(step: TrainStep, batch: Any, hp: StepValues, out: Path, device: torch.device, steps: int = 3) -> None:
    """Profile ``steps`` engine steps; write ``out.txt`` (top ops by self time: CUDA kernels on CUDA, aten ops on
    the CPU) and ``out.trace.json`` (chrome://tracing); print the time per kind of work and, on CUDA, the share
    of the steps' wall time the GPU was busy (the rest: waiting for the host)."""
    cuda = device.type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=activities) as prof:
        start = time.perf_counter()
        for i in range(steps):
            step([batch], dataclasses.replace(hp, step=10_000 + i))
        if cuda:
            torch.cuda.synchronize(device)
        wall = time.perf_counter() - start
    out.parent.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(f"{out}.trace.json")
    averages = prof.key_averages()
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    Path(f"{out}.txt").write_text(averages.table(sort_by=attr, row_limit=25))
    wanted = torch.autograd.DeviceType.CUDA if cuda else torch.autograd.DeviceType.CPU
    events = [e for e in averages if e.device_type == wanted and (cuda or e.key.startswith("aten::"))]
    kinds: dict[str, float] = {}
    for e in events:
        kinds[work_kind(e.key)] = kinds.get(work_kind(e.key), 0.0) + getattr(e, attr)
    total = sum(kinds.values()) or 1.0
    shares = ", ".join(f"{k} {v / total:.0%}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]))
    phases = {e.key.removeprefix("step/"): e.cpu_time_total for e in averages if e.key.startswith("step/")}
    host = ", ".join(f"{k} {v / 1e6 / wall:.0%}" for k, v in phases.items())
    busy = f"; GPU busy {total / 1e6 / wall:.0%} of it" if cuda else ""
    print(f"profile {out.name}: {wall / steps * 1e3:.1f} ms/step{busy}; host time by phase: {host}", flush=True)
    print(f"  {'kernel' if cuda else 'op'} time by kind: {shares} -> {out}.txt", flush=True)


def cpu_matmul_peak(dtype: torch.dtype, size: int = 4096, reps: int = 3) -> float:
    """Best FLOP/s of ``torch.mm`` on two ``size x size`` matrices (all of torch's threads)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def flop_check() -> None:
    """GFLOP/img of fwd + bwd for docs/performance.md's workloads, counted on the meta device (no compute)."""
    meta = torch.device("meta")
    cases: list[tuple[str, Callable[[], torch.nn.Module], float]] = [
        ("ViT-B/16 @224, all tokens", lambda: BACKBONES.create("vit_base_patch16_224"), 105.1),
        ("MAE ViT-B/16 @224", lambda: METHODS.create("mae", backbone="vit_base_patch16_224"), 58.5),
        ("FaceT-B MAE @112 (released decoder, MLP 3)", lambda: METHODS.create("facet_mae"), 57.8),
        ("FaceT-B MAE @112, decoder MLP 4", lambda: METHODS.create("facet_mae", decoder_mlp_ratio=4.0), 57.8),
    ]
    for label, build, reference in cases:
        try:
            model = build().to(meta).train()
            counter = flop_counter_mode()
            if isinstance(model, Method):
                batch = to_device(synthetic_batch(model.views(), 2, NUM_CLASSES), meta)
                with counter:
                    model(batch, step_values(model, 1))["loss"].backward()
            else:
                with counter:
                    model(torch.randn(2, 3, 224, 224, device=meta)).sum().backward()
            measured = counter.get_total_flops() / 2 / 1e9
            print(f"FLOP check {label}: {measured:.1f} GFLOP/img fwd+bwd (performance.md {reference})")
        except Exception as e:  # a check that cannot run is reported, not fatal
            print(f"FLOP check {label}: ERROR {type(e).__name__}: {e}")


def plan(args: argparse.Namespace) -> list[tuple[str, BackboneConfig]]:
    """(method, config) pairs: explicit ``--configs`` for every method, else the device's defaults: the
    main ViT for every method (its own backbone where that is not a ViT), FaceT-B for facet_mae."""
    methods = args.methods.split(",") if args.methods else METHODS.names()
    if args.configs:
        return [(m, CONFIGS[c]) for c in args.configs.split(",") for m in methods]
    main_config = CONFIGS["vit_b" if args.device == "cuda" else "vit_s"]
    pairs = [(m, native_config(m) or main_config) for m in methods]
    return pairs + [(m, CONFIGS["facet_b"]) for m in methods if m in (CONFIGS["facet_b"].only or ())]


def parse_args(
    extra: list[tuple[tuple[str, ...], dict[str, Any]]] | None = None, description: str | None = None
) -> argparse.Namespace:
    """The command line; ``extra`` adds ``(flags, add_argument kwargs)`` for a sibling script."""
    parser = argparse.ArgumentParser(description=description or __doc__.splitlines()[0])
    for flags, kwargs in extra or []:
        parser.add_argument(*flags, **kwargs)
    parser.add_argument("--methods", default=None, help="comma-separated METHODS names (default: all)")
    parser.add_argument("--configs", default=None, help=f"comma-separated, of {', '.join(CONFIGS)}")
    parser.add_argument("--batch", type=int, default=None, help="per-step batch (default: CPU 4, CUDA 256)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: CPU 2, CUDA 20)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps after the FLOP-counting one")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16 = autocast, fp32 weights")
    parser.add_argument(
        "--compile", nargs="?", const="default", choices=COMPILE_MODES, default=None,
        help="torch.compile mode of the method (default mode when given alone; the engine's `compile`)",
    )  # fmt: skip
    parser.add_argument(
        "--fused", action=argparse.BooleanOptionalAction, default=None,
        help="the optimizer's fused kernel (default: on CUDA; the engine's `fused_optimizer`)",
    )  # fmt: skip
    parser.add_argument("--channels-last", action="store_true", help="channels-last convolutions")
    parser.add_argument(
        "--photometric",
        choices=("workers", "device"),
        default=None,
        help="multi-crop's photometric steps (default: device on CUDA, workers on the CPU)",
    )
    parser.add_argument("--log-every", type=int, default=10, help="steps between log-window reads (engine default)")
    parser.add_argument("--profile", type=Path, default=None, help="folder for per-method profiles (top ops, trace)")
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_ACHIEVABLE, help="CUDA peak for MFU")
    args = parser.parse_args()
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    for name in args.methods.split(",") if args.methods else []:
        if name not in METHODS:
            parser.error(f"--methods: unknown method {name!r} (known: {', '.join(METHODS.names())})")
    for name in args.configs.split(",") if args.configs else []:
        if name not in CONFIGS:
            parser.error(f"--configs: unknown config {name!r} (known: {', '.join(CONFIGS)})")
    args.batch = args.batch or (256 if cuda else 4)
    args.photometric = args.photometric or ("device" if cuda else "workers")
    args.steps = args.steps or (20 if cuda else 2)
    if args.warmup is None:
        args.warmup = (10 if args.compile else 5) if cuda else 1
    for name in ("batch", "steps", "log_every", *(["workers"] if "workers" in args else [])):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    return args


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    cuda = device.type == "cuda"
    np.random.seed(0)
    print(
        f"torch {torch.__version__}, device {_device_name(device)}, dtype {args.dtype}, compile {args.compile}, "
        f"fused optimizer {args.fused if args.fused is not None else cuda}, channels-last {args.channels_last}, "
        f"multi-crop photometric on the {args.photometric}"
    )
    flop_check()
    peaks = [] if cuda else [cpu_matmul_peak(dtype)]
    results: list[Row | str] = []
    for name, config in plan(args):
        try:
            row = measure(name, config, args, device)
            print(f"measured {name} {config.label}: {rate_text(row.images_per_s)} images/s", flush=True)
            results.append(row)
        except Exception as e:  # every method gets a line; a broken one must not hide the others
            results.append(f"{name:<12} {config.label:<14} ERROR {type(e).__name__}: {str(e).splitlines()[0][:200]}")
        finally:
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
    if cuda:
        peak = args.peak_tflops * 1e12
    else:
        peaks.append(cpu_matmul_peak(dtype))
        peak = max(peaks)
        print(
            f"CPU peak, torch.mm 4096^2 {args.dtype}: {peaks[0] / 1e9:.1f} before, {peaks[1] / 1e9:.1f} after "
            f"the methods (GFLOP/s); MFU is against the higher"
        )
    print_table(results, peak, cuda)
    rows = [r for r in results if isinstance(r, Row)]
    reference = next((r for r in rows if r.method == "mae"), rows[0] if rows else None)
    if reference is None:
        print("no method ran")
        print(f"speedup=0.00 goal={1 if cuda else GOAL_MFU}")
        return
    mfu = reference.achieved / peak
    print(
        f"{reference.method} {reference.config}: {reference.achieved / 1e12:.3f} of {peak / 1e12:.3f} TFLOP/s "
        f"peak = {mfu:.1%} MFU (goal {GOAL_MFU:.0%})"
    )
    print(f"speedup={mfu / GOAL_MFU:.2f} goal=1" if cuda else f"speedup={mfu:.2f} goal={GOAL_MFU}")


def print_table(results: list[Row | str], peak: float, cuda: bool) -> None:
    """One line per (method, config): GFLOP/img, images/s, achieved TFLOP/s, MFU (and MFU@989 on CUDA)."""
    header = f"{'method':<12} {'config':<14} {'batch':>5} {'GFLOP/img':>9} {'img/s':>9} {'TFLOP/s':>8} {'MFU':>6}"
    print(header + ("  MFU@989" if cuda else ""))
    for row in results:
        if isinstance(row, str):
            print(row)
            continue
        line = (
            f"{row.method:<12} {row.config:<14} {row.batch:>5} {row.flops_per_image / 1e9:>9.1f} "
            f"{rate_text(row.images_per_s):>9} {row.achieved / 1e12:>8.3f} {row.achieved / peak:>6.1%}"
        )
        print(line + (f"  {row.achieved / (H100_BF16_SPEC * 1e12):>7.1%}" if cuda else ""))


def rate_text(images_per_s: float) -> str:
    return f"{images_per_s:,.1f}" if images_per_s >= 10 else f"{images_per_s:.3f}"


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


if __name__ == "__main__":
    main()
