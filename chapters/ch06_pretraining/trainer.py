# Generated from chapters/ch06_pretraining/ch06_pretraining.ipynb by `python setup/export_modules.py`. Do not edit:
# change the notebook's cells tagged for export and run that command again.


"""The pre-training loop that chapters 6 to 10 share.

Reads top to bottom: the training config, batches from token shards, the loss, the optimizer
and learning-rate schedule, throughput accounting, checkpoints with exact resume, the
`Trainer` itself, and finally the course's base model (`ensure_base_model`).

The trainer knows nothing about where batches come from: any `get_batch(step, micro_step)`
that returns `(inputs, labels)` as LongTensors of shape (B, T), with -100 marking labels to
ignore, will do. Because that function is a pure function of the step, a run resumed from a
checkpoint sees exactly the batches that an uninterrupted run would have seen.
"""

import contextlib
import json
import math
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from chapters.ch01_data.data_pipeline import ensure_clean_corpus
from chapters.ch02_tokenizer.tokenizer import (
    encode_text,
    ensure_token_shards,
    ensure_tokenizer,
    load_tokenizer,
    load_tokens,
    tokenizer_path,
)
from chapters.ch04_blocks.model import LanguageModel, ModelConfig, flops_per_token, generate
from chapters.course import (
    artifacts_dir,
    atomic_folder,
    atomic_write,
    pick_device,
    recipe_path,
    record_recipe,
    sha256_of,
    stale_reason,
)

IGNORE_INDEX = -100  # the label value that the loss skips (padding, prompts in chapter 8)
Batch = tuple[torch.Tensor, torch.Tensor]
GetBatch = Callable[[int, int], Batch]


@dataclass
class TrainingConfig:
    """Every knob of a training run. `default_training_config()` sets the base model's run
    from these defaults; a GPU run changes sizes only."""

    steps: int = 600  # optimizer updates
    batch_size: int = 16  # sequences per micro-batch
    context_length: int = 128  # tokens per sequence
    grad_accumulation: int = 1  # micro-batches per update
    learning_rate: float = 3e-3  # peak, reached at the end of warm-up
    min_lr: float = 3e-4  # the floor that cosine decay ends on
    warmup_steps: int = 30
    weight_decay: float = 0.1  # on matrices only (see `build_optimizer`)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # clip the global gradient norm to this; 0 disables clipping
    precision: str = "fp32"  # "fp32" or "bf16" (autocast, where the device supports it)
    compile: bool = False  # torch.compile the model's forward pass
    eval_interval: int = 100  # steps between validation passes; 0 = only at the end
    eval_batches: int = 8  # batches per validation pass
    log_interval: int = 10  # steps between logged records and progress-bar updates
    sample_interval: int = 0  # steps between samples from fixed prompts; 0 = only at the end
    checkpoint_interval: int = 0  # steps between checkpoints; 0 = only at the end of `fit`
    seed: int = 0
    # Divergence rule: stop when the loss is NaN/inf, or exceeds spike_factor times the mean
    # of the last SPIKE_WINDOW losses (checked once that window is full).
    spike_factor: float = 3.0

    def __post_init__(self) -> None:
        problems = []
        for name in ("steps", "batch_size", "context_length", "grad_accumulation"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                problems.append(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in (
            "warmup_steps",
            "eval_interval",
            "eval_batches",
            "log_interval",
            "sample_interval",
            "checkpoint_interval",
        ):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                problems.append(f"{name} must be an integer >= 0, got {getattr(self, name)!r}")
        if not self.learning_rate > 0:
            problems.append(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.min_lr <= self.learning_rate:
            problems.append(
                f"min_lr must lie in [0, learning_rate={self.learning_rate}], got {self.min_lr}"
            )
        if isinstance(self.warmup_steps, int) and self.warmup_steps > self.steps:
            problems.append(f"warmup_steps ({self.warmup_steps}) exceeds steps ({self.steps})")
        if self.weight_decay < 0 or self.grad_clip < 0:
            problems.append("weight_decay and grad_clip must be >= 0")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            problems.append(f"beta1 and beta2 must lie in [0, 1), got {self.beta1}, {self.beta2}")
        if self.precision not in ("fp32", "bf16"):
            problems.append(f'precision must be "fp32" or "bf16", got {self.precision!r}')
        if not self.spike_factor > 1:
            problems.append(f"spike_factor must be > 1, got {self.spike_factor}")
        if problems:
            raise ValueError("Invalid TrainingConfig: " + "; ".join(problems) + ".")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.context_length * self.grad_accumulation

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainingConfig":
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown TrainingConfig fields {unknown}; known: {sorted(known)}.")
        return cls(**values)


SPIKE_WINDOW = 20  # losses averaged for the spike rule
# A run whose weights' norm grew beyond this multiple of its start has diverged: weight decay
# keeps a healthy run within a few times its starting norm.
MAX_WEIGHT_GROWTH = 100.0
# Fields that change what is logged but not what is trained: a resumed run may change them.
MONITORING_FIELDS = frozenset(
    {
        "eval_interval",
        "eval_batches",
        "log_interval",
        "sample_interval",
        "checkpoint_interval",
        "compile",
    }
)


def open_token_shard(path: str | Path) -> np.memmap:
    """Memory-map a shard of uint16 token ids, with a clear error if it is missing or empty."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Token shard {path} does not exist. Build the shards with "
            "`from chapters.ch02_tokenizer.tokenizer import ensure_token_shards; "
            "ensure_token_shards()` (or check the path)."
        )
    if path.stat().st_size < 2 or path.stat().st_size % 2:
        raise ValueError(
            f"Token shard {path} has {path.stat().st_size} bytes; a shard of uint16 ids has an "
            "even, non-zero size. Delete it and rebuild it with ensure_token_shards()."
        )
    return np.memmap(path, dtype=np.uint16, mode="r")


def open_tokenizer(path: str | Path) -> Tokenizer:
    """A tokenizer.json from disk; a missing or damaged file raises an error that says how to
    rebuild it (chapter 2's `load_tokenizer` does the checking)."""
    return load_tokenizer(path)


def _check_fits(tokens: np.ndarray, batch_size: int, context_length: int, what: str) -> None:
    # non-overlapping eval windows need batch_size of them; random windows may overlap, so
    # they need just one (call with batch_size=1)
    needed = batch_size * context_length + 1
    if len(tokens) < needed:
        raise ValueError(
            f"The {what} data has {len(tokens):,} tokens, fewer than one batch needs "
            f"(batch_size {batch_size} x context_length {context_length} + 1 = {needed:,}). "
            "Use a smaller batch_size or context_length, or more data."
        )


def random_window_batches(
    tokens: np.ndarray, batch_size: int, context_length: int, seed: int = 0
) -> GetBatch:
    """A `get_batch(step, micro_step)` that draws random windows of `context_length + 1` tokens.

    The windows depend only on (seed, step, micro_step), never on what was drawn before: that
    is what makes a resumed run see exactly the batches an uninterrupted run would see.
    """
    _check_fits(tokens, 1, context_length, "training")
    last_start = len(tokens) - context_length - 1

    def get_batch(step: int, micro_step: int) -> Batch:
        rng = np.random.default_rng([seed, step, micro_step])
        starts = rng.integers(0, last_start + 1, size=batch_size)
        windows = np.stack([tokens[s : s + context_length + 1] for s in starts]).astype(np.int64)
        windows = torch.from_numpy(windows)  # (B, T+1)
        return windows[:, :-1], windows[:, 1:]  # inputs and labels, both (B, T)

    return get_batch


def sequential_eval_batches(
    tokens: np.ndarray, batch_size: int, context_length: int, max_batches: int | None = None
) -> Iterator[Batch]:
    """Non-overlapping windows from the start of `tokens`, in order: the same pass every time."""
    _check_fits(tokens, batch_size, context_length, "evaluation")
    windows_available = (len(tokens) - 1) // context_length
    batches_available = windows_available // batch_size
    if max_batches is not None:
        batches_available = min(batches_available, max_batches)
    for batch in range(batches_available):
        start = batch * batch_size * context_length
        flat = np.asarray(tokens[start : start + batch_size * context_length + 1], dtype=np.int64)
        inputs = torch.from_numpy(flat[:-1].reshape(batch_size, context_length))
        labels = torch.from_numpy(flat[1:].reshape(batch_size, context_length))
        yield inputs, labels


def cross_entropy_loss(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Mean negative log-likelihood of `labels` under `logits`, written out.

    -log softmax(z)[y] = logsumexp(z) - z[y]; subtracting the row maximum before exponentiating
    keeps exp() from overflowing without changing the result (it cancels).
    logits: (..., V), labels: (...). Labels equal to `ignore_index` contribute nothing.
    """
    logits = logits.float().reshape(-1, logits.shape[-1])  # (N, V)
    labels = labels.reshape(-1)  # (N,)
    keep = labels != ignore_index
    if bool(((labels[keep] < 0) | (labels[keep] >= logits.shape[-1])).any()):
        bad = labels[keep][(labels[keep] < 0) | (labels[keep] >= logits.shape[-1])][0]
        raise ValueError(
            f"label {int(bad)} is outside the {logits.shape[-1]} classes; only "
            f"{ignore_index} (ignore_index) may lie outside [0, {logits.shape[-1]})."
        )
    row_max = logits.max(dim=-1, keepdim=True).values.detach()  # (N, 1), a constant shift
    log_sum_exp = row_max.squeeze(-1) + torch.log(torch.exp(logits - row_max).sum(dim=-1))
    target_logit = logits.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (N,)
    losses = (log_sum_exp - target_logit) * keep
    return losses.sum() / keep.sum().clamp(min=1)


def build_optimizer(model: torch.nn.Module, config: TrainingConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only.

    Every 2-D parameter (linear weights, and the embedding table, which is tied to the output
    layer in the course's model) is decayed; vectors (norm gains, biases) are not: shrinking a
    norm's gain towards 0 only fights the normalisation.
    """
    matrices = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    vectors = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [
        {"params": matrices, "weight_decay": config.weight_decay},
        {"params": vectors, "weight_decay": 0.0},
    ]
    # fused=True updates every tensor in one kernel instead of a Python loop over them (about
    # 5% of a CPU step at the course's size); it needs floating-point tensors on CPU or CUDA.
    fused = all(
        p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in matrices + vectors
    )
    return torch.optim.AdamW(
        groups,
        lr=config.learning_rate,
        betas=(config.beta1, config.beta2),
        eps=1e-8,
        fused=fused or None,
    )


def lr_at(step: int, config: TrainingConfig) -> float:
    """Learning rate for update `step` (0-based): linear warm-up, then cosine decay to min_lr.

    Update warmup_steps - 1 uses the peak, update steps - 1 the floor exactly.
    """
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    decay_steps = max(1, config.steps - 1 - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / decay_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return config.min_lr + (config.learning_rate - config.min_lr) * cosine


def global_grad_norm(parameters: Iterable[torch.nn.Parameter]) -> torch.Tensor:
    """The L2 norm of all gradients stacked into one vector (what clipping looks at)."""
    norms = [p.grad.detach().float().norm() for p in parameters if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.tensor(0.0)


def clip_by_global_norm(parameters: Iterable[torch.nn.Parameter], max_norm: float) -> float:
    """Scale all gradients by one factor so that their global norm is at most `max_norm`.

    Returns the norm before clipping. One factor for all keeps the update's direction.
    """
    parameters = [p for p in parameters if p.grad is not None]
    total = global_grad_norm(parameters)
    if max_norm > 0:
        scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
        for p in parameters:
            p.grad.mul_(scale.to(p.grad.device))
    return float(total)


def supports_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast is available on `device` (CPUs: yes; CUDA: Ampere or newer)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu"


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast where requested and supported; otherwise plain fp32."""
    if precision == "bf16" and supports_bf16(device):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def training_flops_per_token(model: torch.nn.Module, sequence_length: int | None = None) -> float:
    """Training FLOPs per token (forward + backward): chapter 4's `flops_per_token`, 6 FLOPs
    per matmul weight plus attention's term, for a model with a `ModelConfig`; for any other
    model the plain 6 x parameters."""
    config = getattr(model, "config", None)
    if isinstance(config, ModelConfig):
        return flops_per_token(config, sequence_length)
    return 6.0 * sum(p.numel() for p in model.parameters())


# Dense (no sparsity) peaks from the vendors' datasheets, FLOP/s: bf16 on the tensor cores,
# fp32 without TF32. Looked up by name, first match wins (so "H100 PCIe" before "H100").
GPU_PEAK_FLOPS: dict[str, dict[torch.dtype, float]] = {
    "H100 PCIe": {torch.bfloat16: 756e12, torch.float32: 51e12},
    "H100": {torch.bfloat16: 989e12, torch.float32: 67e12},  # SXM
    "H200": {torch.bfloat16: 989e12, torch.float32: 67e12},
    "A100": {torch.bfloat16: 312e12, torch.float32: 19.5e12},
    "L40S": {torch.bfloat16: 362e12, torch.float32: 91.6e12},
    "L4": {torch.bfloat16: 121e12, torch.float32: 30.3e12},
    "A10": {torch.bfloat16: 125e12, torch.float32: 31.2e12},
    "RTX 4090": {torch.bfloat16: 165e12, torch.float32: 82.6e12},
}


def datasheet_peak_flops(device_name: str, dtype: torch.dtype) -> float | None:
    """The datasheet peak of a GPU named like `torch.cuda.get_device_name()`, or None."""
    for key, peaks in GPU_PEAK_FLOPS.items():
        if key in device_name:
            return peaks.get(dtype)
    return None


def measure_peak_flops(
    device: torch.device | str | None = None,
    size: int = 1024,
    dtype: torch.dtype = torch.float32,
    seconds: float = 1.0,
) -> float:
    """FLOP/s of a large square matmul on `device`, through `F.linear` (the kernel every
    `nn.Linear` runs; on some CPUs `a @ b` in bf16 takes a path twenty times slower)."""
    device = torch.device(device) if device is not None else pick_device()
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = 0.0
    deadline = time.perf_counter() + seconds
    for _ in range(2):  # warm-up
        F.linear(a, b)
    while True:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(4):
            F.linear(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        best = max(best, 4 * 2 * size**3 / elapsed)
        if time.perf_counter() > deadline:
            return best


def hardware_peak_flops(
    device: torch.device | str, dtype: torch.dtype = torch.float32, seconds: float = 1.0
) -> tuple[float, str]:
    """The peak that MFU divides by, and where it comes from: a known GPU's datasheet figure,
    otherwise (CPUs, GPUs not in the table) the measured large-matmul peak in `dtype`."""
    device = torch.device(device)
    if device.type == "cuda":
        listed = datasheet_peak_flops(torch.cuda.get_device_name(device), dtype)
        if listed is not None:
            return listed, "datasheet"
    return measure_peak_flops(device, dtype=dtype, seconds=seconds), "measured large-matmul peak"


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    batches: Iterable[Batch],
    *,
    max_batches: int | None = None,
    device: torch.device | None = None,
    precision: str = "fp32",
) -> float:
    """Mean loss per predicted token over `batches` (dropout off, no gradients)."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for index, (inputs, labels) in enumerate(batches):
        if max_batches is not None and index >= max_batches:
            break
        with autocast_context(device, precision):
            logits = model(inputs.to(device))
        labels = labels.to(device)
        total += float(
            F.cross_entropy(
                logits.float().flatten(0, 1),
                labels.flatten(),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
        )
        count += int((labels != IGNORE_INDEX).sum())
    model.train(was_training)
    if count == 0:
        raise ValueError("evaluate() got no labelled tokens: the batches were empty.")
    return total / count


CHECKPOINT_FORMAT = 1


def _model_config_dict(model: torch.nn.Module) -> dict | None:
    config = getattr(model, "config", None)
    return config.to_dict() if hasattr(config, "to_dict") else None


def _mismatches(saved: dict, current: dict, ignore: frozenset = frozenset()) -> list[str]:
    names = sorted((set(saved) | set(current)) - ignore)
    return [
        f"{name} (checkpoint {saved.get(name)!r}, now {current.get(name)!r})"
        for name in names
        if saved.get(name) != current.get(name)
    ]


def save_checkpoint(
    folder: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    config: TrainingConfig,
    step: int,
    extra_state: dict | None = None,
    keep: int = 2,
) -> Path:
    """Write a checkpoint for `step` into `folder`/step_NNNNNNN and point `latest.json` at it.

    Everything goes into a temporary folder first, which is renamed into place only when
    complete; `latest.json` is replaced atomically afterwards. A crash at any moment leaves the
    previous checkpoint intact. Only the newest `keep` checkpoints are kept.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:07d}"
    # step folders in a checkpoint folder are the trainer's own: an older save of the same
    # step (a resumed run saving again) is replaced
    with atomic_folder(folder / name, writer=CHECKPOINT_WRITER, overwrite=True) as temporary:
        save_model(model, str(temporary / "model.safetensors"))  # handles tied weights
        optimizer_state = optimizer.state_dict()
        tensors = {
            f"state.{index}.{key}": value.detach().cpu().contiguous()
            for index, state in optimizer_state["state"].items()
            for key, value in state.items()
        }
        save_file(tensors, str(temporary / "optimizer.safetensors"))
        rng = {"torch_cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            for index, state in enumerate(torch.cuda.get_rng_state_all()):
                rng[f"torch_cuda.{index}"] = state
        save_file(rng, str(temporary / "rng.safetensors"))
        state = {
            "format": CHECKPOINT_FORMAT,
            "step": step,
            "data_position": {"next_step": step, "micro_step": 0},  # get_batch is pure in step
            "scheduler": {"next_lr": lr_at(step, config)},
            "training_config": config.to_dict(),
            "model_config": _model_config_dict(model),
            "optimizer_param_groups": optimizer_state["param_groups"],
            **(extra_state or {}),
        }
        (temporary / "trainer_state.json").write_text(json.dumps(state, indent=1))
    with atomic_write(folder / "latest.json") as file:
        json.dump({"step": step, "folder": name}, file)
    finished = sorted(path for path in folder.glob("step_*") if path.is_dir())
    for old in finished[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return folder / name


CHECKPOINT_WRITER = "ch06_pretraining.save_checkpoint"
CHECKPOINT_FILES = ("model.safetensors", "optimizer.safetensors", "rng.safetensors")


def _is_complete(checkpoint: Path) -> bool:
    if not all((checkpoint / name).is_file() for name in CHECKPOINT_FILES):
        return False
    try:
        return isinstance(json.loads((checkpoint / "trainer_state.json").read_text()), dict)
    except (OSError, ValueError):
        return False


def latest_checkpoint(folder: str | Path) -> Path:
    """The newest complete checkpoint in `folder`: the one latest.json names, or, if that one is
    missing or damaged (a kill at the wrong moment), the newest complete step_* folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"No checkpoint folder {folder}. Train with checkpoint_dir={str(folder)!r} first, or "
            "pass the folder of a run that saved checkpoints."
        )
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        named = folder / Path(json.loads((folder / "latest.json").read_text())["folder"]).name
        if _is_complete(named):
            return named
    complete = [path for path in sorted(folder.glob("step_*"), reverse=True) if _is_complete(path)]
    if not complete:
        raise FileNotFoundError(
            f"No complete checkpoint in {folder} (latest.json and step_* folders are missing or "
            "damaged). Train with a checkpoint_dir first, or start a new run."
        )
    return complete[0]


def latest_step(folder: str | Path) -> int | None:
    """The step of the newest complete checkpoint in `folder`, or None if there is none."""
    with contextlib.suppress(FileNotFoundError):
        return int(latest_checkpoint(folder).name.removeprefix("step_"))
    return None


def load_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    config: TrainingConfig,
) -> dict:
    """Restore model, optimizer and RNG states from a checkpoint folder; return its state.

    Refuses a checkpoint written with a different model or training config and names the
    fields that differ (monitoring fields such as log_interval may change).
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"No checkpoint at {path}: the folder does not exist. Pass the checkpoint_dir of a "
            "run that saved checkpoints, or one of its step_* folders."
        )
    if not (path / "trainer_state.json").is_file():  # a run's folder, not one checkpoint
        path = latest_checkpoint(path)
    for name in (*CHECKPOINT_FILES, "trainer_state.json"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"Checkpoint {path} is incomplete: {name} is missing.")
    try:
        return _restore(path, model, optimizer, config)
    except (SafetensorError, json.JSONDecodeError, UnicodeDecodeError, KeyError) as error:
        raise ValueError(
            f"Checkpoint {path} is damaged ({type(error).__name__}: {error}). Delete that "
            "step folder to resume from the one before it, or start a new run."
        ) from error


def _restore(path: Path, model, optimizer, config: TrainingConfig) -> dict:
    state = json.loads((path / "trainer_state.json").read_text())
    problems = _mismatches(state["training_config"], config.to_dict(), MONITORING_FIELDS)
    if state.get("model_config") is not None or _model_config_dict(model) is not None:
        problems += [
            "model." + item
            for item in _mismatches(
                state.get("model_config") or {}, _model_config_dict(model) or {}
            )
        ]
    if problems:
        raise ValueError(
            f"Checkpoint {path} was written with a different config: " + "; ".join(problems) + ". "
            "Resume with the checkpoint's config, or start a new run in another folder."
        )
    missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=True)
    tensors = load_file(str(path / "optimizer.safetensors"))
    optimizer_state: dict = {"state": {}, "param_groups": state["optimizer_param_groups"]}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        optimizer_state["state"].setdefault(int(index), {})[name] = value
    for group in optimizer_state["param_groups"]:
        group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict(optimizer_state)
    rng = load_file(str(path / "rng.safetensors"))
    torch.set_rng_state(rng["torch_cpu"])
    if torch.cuda.is_available():
        cuda_states = [rng[k] for k in sorted(rng) if k.startswith("torch_cuda.")]
        if cuda_states:
            torch.cuda.set_rng_state_all(cuda_states)
    return state


@dataclass
class TrainingHistory:
    """What a run logged: per-step losses, periodic records, evaluations and samples."""

    step_losses: list[float] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)  # every log_interval steps
    evaluations: list[dict] = field(default_factory=list)  # {"step", "val_loss", "val_perplexity"}
    samples: list[dict] = field(default_factory=list)  # {"step", "texts"}
    stopped_reason: str | None = None  # None: ran to the end; else why it stopped early

    @property
    def diverged(self) -> bool:
        return self.stopped_reason is not None and self.stopped_reason.startswith("diverged")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainingHistory":
        return cls(**values)


class Divergence(RuntimeError):
    """Raised by Trainer.train_step when the loss, gradient or weights blow up; fit() stops."""


def _weight_norm(parameters: Iterable[torch.nn.Parameter]) -> float:
    """The L2 norm of all parameters stacked into one vector."""
    return math.sqrt(sum(float(p.detach().float().pow(2).sum()) for p in parameters))


class Trainer:
    """Trains `model` on batches from `get_batch(step, micro_step)`.

    make_eval_batches: returns a fresh iterable of validation batches (a sequential pass).
    sampler: called with the model at sample intervals; returns texts to log.
    checkpoint_dir: where checkpoints go (none are written if None).
    peak_flops: the device's peak (hardware_peak_flops), for MFU in the logs.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        config: TrainingConfig,
        get_batch: GetBatch,
        *,
        make_eval_batches: Callable[[], Iterable[Batch]] | None = None,
        sampler: Callable[[torch.nn.Module], list[str]] | None = None,
        checkpoint_dir: str | Path | None = None,
        device: torch.device | str | None = None,
        peak_flops: float | None = None,
        show_progress: bool = True,
    ) -> None:
        model_context = getattr(getattr(model, "config", None), "context_length", None)
        if model_context is not None and config.context_length > model_context:
            raise ValueError(
                f"TrainingConfig.context_length={config.context_length} is longer than the "
                f"model's context_length={model_context}. Lower the training context or build "
                "a model with a longer context."
            )
        self.config = config
        self.device = torch.device(device) if device is not None else pick_device()
        self.model = model.to(self.device)
        self.model.train()
        self.forward = torch.compile(self.model) if config.compile else self.model
        self.get_batch = get_batch
        self.make_eval_batches = make_eval_batches
        self.sampler = sampler
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.peak_flops = peak_flops
        self.show_progress = show_progress
        self.optimizer = build_optimizer(self.model, config)
        self.parameters = [p for p in self.model.parameters() if p.requires_grad]
        self.flops_per_token = training_flops_per_token(self.model, config.context_length)
        self.model_context = model_context
        self.step = 0
        self.history = TrainingHistory()
        self.recent_losses: deque[float] = deque(maxlen=SPIKE_WINDOW)
        self.initial_weight_norm = _weight_norm(self.parameters)
        torch.manual_seed(config.seed)  # dropout and anything else drawn during training

    # -- one update --------------------------------------------------------------------

    def _micro_batches(self, step: int) -> list[Batch]:
        batches = [self.get_batch(step, micro) for micro in range(self.config.grad_accumulation)]
        for inputs, labels in batches:
            if inputs.shape != labels.shape or inputs.dim() != 2:
                raise ValueError(
                    f"get_batch must return inputs and labels of the same shape (B, T); got "
                    f"{tuple(inputs.shape)} and {tuple(labels.shape)}."
                )
            if self.model_context is not None and inputs.shape[1] > self.model_context:
                raise ValueError(
                    f"A batch has {inputs.shape[1]} tokens per sequence, more than the model's "
                    f"context_length={self.model_context}."
                )
        return batches

    def _divergence(self, loss: float, grad_norm: float) -> str | None:
        if not math.isfinite(loss):
            return f"diverged at step {self.step}: the loss is {loss}"
        if not math.isfinite(grad_norm):
            return f"diverged at step {self.step}: the gradient norm is {grad_norm}"
        if len(self.recent_losses) == SPIKE_WINDOW:
            mean = sum(self.recent_losses) / SPIKE_WINDOW
            if loss > self.config.spike_factor * mean:
                return (
                    f"diverged at step {self.step}: loss {loss:.3f} is more than "
                    f"{self.config.spike_factor} x the mean of the last {SPIKE_WINDOW} "
                    f"losses ({mean:.3f})"
                )
        return None

    def accumulate_gradients(self, step: int) -> float:
        """Forward and backward over the micro-batches of `step`; return the step's loss.

        Each micro-batch's summed loss is divided by the number of labelled tokens in the whole
        step, so the accumulated gradient is exactly that of one large batch (even when the
        micro-batches hold different numbers of labels, as in chapter 8's SFT batches).
        """
        micro_batches = self._micro_batches(step)
        labelled = sum(int((labels != IGNORE_INDEX).sum()) for _, labels in micro_batches)
        if labelled == 0:
            raise ValueError(f"Step {step}: every label in the batch is {IGNORE_INDEX}.")
        total_loss = torch.zeros((), device=self.device)
        for inputs, labels in micro_batches:
            inputs, labels = inputs.to(self.device), labels.to(self.device)
            with autocast_context(self.device, self.config.precision):
                logits = self.forward(inputs)  # (B, T, V)
            loss = (
                F.cross_entropy(
                    logits.float().flatten(0, 1),
                    labels.flatten(),
                    ignore_index=IGNORE_INDEX,
                    reduction="sum",
                )
                / labelled
            )
            loss.backward()
            total_loss += loss.detach()
        return float(total_loss)

    def train_step(self) -> tuple[float, float, float | None]:
        """One optimizer update: returns (loss, gradient norm, update-to-weight ratio or None).

        The update-to-weight ratio |delta w| / |w| is measured on logging steps only (it needs
        a copy of the weights). A non-finite or spiking loss raises `Divergence` before any
        weight changes, so the model stays at its last good state; weights that grew more than
        MAX_WEIGHT_GROWTH-fold raise it on a logging step, after the update.
        """
        config = self.config
        lr = lr_at(self.step, config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss_value = self.accumulate_gradients(self.step)
        grad_norm = clip_by_global_norm(self.parameters, config.grad_clip)
        problem = self._divergence(loss_value, grad_norm)
        if problem is not None:
            self.optimizer.zero_grad(set_to_none=True)
            raise Divergence(problem)
        measure = (self.step + 1) % max(1, config.log_interval) == 0
        before = [p.detach().clone() for p in self.parameters] if measure else None
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        ratio = None
        if before is not None:
            update = sum(
                float((p.detach() - b).float().pow(2).sum())
                for p, b in zip(self.parameters, before, strict=True)
            )
            weight = _weight_norm(self.parameters)
            ratio = math.sqrt(update) / max(weight, 1e-12)
            # RMSNorm undoes any scale of the weights, so the loss can look fine while they
            # explode (lr 100: 1e11 and rising); their norm shows it.
            if not weight <= MAX_WEIGHT_GROWTH * self.initial_weight_norm:
                raise Divergence(
                    f"diverged at step {self.step + 1}: the weights' norm is {weight:.3g}, more "
                    f"than {MAX_WEIGHT_GROWTH:g} x its starting {self.initial_weight_norm:.3g} "
                    "(is the learning rate too high?)"
                )
        self.recent_losses.append(loss_value)
        self.step += 1
        return loss_value, grad_norm, ratio

    # -- the loop ----------------------------------------------------------------------

    def fit(self, until_step: int | None = None) -> TrainingHistory:
        """Train up to `until_step` (default: config.steps); return the history.

        Stops early and cleanly on divergence (see TrainingConfig.spike_factor), keeping the
        last good checkpoint. Writes a checkpoint at the end if a checkpoint_dir was given.
        """
        config = self.config
        target = config.steps if until_step is None else min(until_step, config.steps)
        bar = tqdm(
            total=config.steps,
            initial=self.step,
            desc="training",
            unit="step",
            disable=not self.show_progress,
        )
        window_start, window_tokens, window_losses = time.perf_counter(), 0, []
        try:
            while self.step < target:
                try:
                    loss, grad_norm, ratio = self.train_step()
                except Divergence as problem:
                    self._stop(f"{problem} Stopped; the last good checkpoint is kept.")
                    break
                self.history.step_losses.append(loss)
                window_losses.append(loss)
                window_tokens += config.tokens_per_step
                if ratio is not None:
                    elapsed = time.perf_counter() - window_start
                    self._record(loss, grad_norm, ratio, window_losses, window_tokens, elapsed, bar)
                    window_start, window_tokens, window_losses = time.perf_counter(), 0, []
                bar.update(1)
                paused = self._periodic_work()
                window_start += paused  # evaluation time does not count against tokens/s
            saved = latest_step(self.checkpoint_dir) if self.checkpoint_dir else None
            if self.checkpoint_dir is not None and not self.history.diverged and saved != self.step:
                self.save()  # unless the interval has just saved this very step
        finally:
            bar.close()
        return self.history

    def _record(self, loss, grad_norm, ratio, losses, tokens, elapsed, bar) -> None:
        mean_loss = sum(losses) / len(losses)
        tokens_per_second = tokens / max(elapsed, 1e-9)
        flops_per_second = tokens_per_second * self.flops_per_token
        record = {
            "step": self.step,
            "train_loss": mean_loss,
            "train_perplexity": math.exp(min(mean_loss, 50.0)),
            "grad_norm": grad_norm,
            "update_to_weight": ratio,
            "lr": lr_at(self.step - 1, self.config),
            "tokens_per_second": tokens_per_second,
            "flops_per_second": flops_per_second,
            "mfu": flops_per_second / self.peak_flops if self.peak_flops else None,
        }
        self.history.records.append(record)
        bar.set_postfix(
            loss=f"{mean_loss:.3f}", tok_s=f"{tokens_per_second:,.0f}", lr=f"{record['lr']:.1e}"
        )

    def _periodic_work(self) -> float:
        config, step, started = self.config, self.step, time.perf_counter()
        last = step == config.steps
        if self.make_eval_batches is not None and (
            last or (config.eval_interval and step % config.eval_interval == 0)
        ):
            val_loss = self.evaluate()
            self.history.evaluations.append(
                {"step": step, "val_loss": val_loss, "val_perplexity": math.exp(min(val_loss, 50))}
            )
        if self.sampler is not None and (
            last or (config.sample_interval and step % config.sample_interval == 0)
        ):
            self.history.samples.append({"step": step, "texts": self.sampler(self.model)})
        if (
            self.checkpoint_dir is not None
            and config.checkpoint_interval
            and step % config.checkpoint_interval == 0
        ):
            self.save()
        return time.perf_counter() - started

    def _stop(self, message: str) -> None:
        self.history.stopped_reason = message
        print(message)

    def evaluate(self) -> float:
        """Mean validation loss over config.eval_batches batches of make_eval_batches()."""
        if self.make_eval_batches is None:
            raise ValueError("This Trainer was built without make_eval_batches.")
        return evaluate(
            self.model,
            self.make_eval_batches(),
            max_batches=self.config.eval_batches or None,
            device=self.device,
            precision=self.config.precision,
        )

    # -- checkpoints ---------------------------------------------------------------------

    def save(self, folder: str | Path | None = None) -> Path:
        """Checkpoint the run (model, optimizer, RNG, step, config, history)."""
        folder = folder or self.checkpoint_dir
        if folder is None:
            raise ValueError("No checkpoint folder: pass checkpoint_dir to Trainer or to save().")
        extra = {
            "recent_losses": list(self.recent_losses),
            "history": self.history.to_dict(),
            "initial_weight_norm": self.initial_weight_norm,
        }
        return save_checkpoint(folder, self.model, self.optimizer, self.config, self.step, extra)

    def resume(self, path: str | Path | None = None) -> int:
        """Continue from a checkpoint (default: the newest in checkpoint_dir); return its step."""
        path = path or self.checkpoint_dir
        if path is None:
            raise ValueError("Nothing to resume from: pass a checkpoint path or checkpoint_dir.")
        state = load_checkpoint(path, self.model, self.optimizer, self.config)
        self.step = state["step"]
        self.recent_losses = deque(state.get("recent_losses", []), maxlen=SPIKE_WINDOW)
        self.initial_weight_norm = state.get("initial_weight_norm", self.initial_weight_norm)
        if "history" in state:
            self.history = TrainingHistory.from_dict(state["history"])
        return self.step


SAMPLE_PROMPTS = ("def ", "import os\n", "class ", "The ")


def default_model_config() -> ModelConfig:
    """The course's base model: 4 layers, width 128, context 128, vocabulary 4096 (tied)."""
    return ModelConfig(vocab_size=4096, context_length=128, d_model=128, n_layers=4, n_heads=4)


BASE_TRAINING_MINUTES = 6  # on 2 CPU cores: 4.8 measured (evaluations included); 8 at most


def default_training_config() -> TrainingConfig:
    """The chapter's run: 2,400 updates of 16 x 128 tokens (about 4.9M tokens, 1.6 passes over
    chapter 2's training shard), about 5 minutes on 2 CPU cores."""
    return TrainingConfig(steps=2400, warmup_steps=50, eval_interval=300)


def prompt_sampler(
    tokenizer,
    prompts: Iterable[str] = SAMPLE_PROMPTS,
    max_new_tokens: int = 40,
    temperature: float = 0.8,
    top_k: int | None = 40,
    seed: int = 0,
) -> Callable[[torch.nn.Module], list[str]]:
    """A sampler for Trainer: continues each fixed prompt with the same random seed each time,
    so that samples at different steps differ only because the model changed."""
    prompts = list(prompts)

    def sample(model: torch.nn.Module) -> list[str]:
        device = next(model.parameters()).device
        texts = []
        for prompt in prompts:
            generator = torch.Generator(device=device).manual_seed(seed)
            ids = torch.tensor([encode_text(tokenizer, prompt)], device=device)
            out = generate(
                model,
                ids,
                max_new_tokens,
                temperature=temperature,
                top_k=top_k,
                generator=generator,
            )
            texts.append(tokenizer.decode(out[0].tolist()))
        return texts

    return sample


def train_base_model(
    model_config: ModelConfig | None = None,
    config: TrainingConfig | None = None,
    *,
    peak_flops: float | None = None,
    checkpoint_dir: str | Path | None = None,
    show_progress: bool = True,
) -> tuple[LanguageModel, TrainingHistory]:
    """Train the course's base model on chapter 2's token shards; return (model, history)."""
    model_config = model_config or default_model_config()
    config = config or default_training_config()
    tokenizer = ensure_tokenizer()
    train_tokens, validation_tokens = load_tokens("train"), load_tokens("validation")
    torch.manual_seed(config.seed)
    model = LanguageModel(model_config)
    trainer = Trainer(
        model,
        config,
        random_window_batches(train_tokens, config.batch_size, config.context_length, config.seed),
        make_eval_batches=lambda: sequential_eval_batches(
            validation_tokens, config.batch_size, config.context_length, config.eval_batches
        ),
        sampler=prompt_sampler(tokenizer),
        checkpoint_dir=checkpoint_dir,
        peak_flops=peak_flops,
        show_progress=show_progress,
    )
    history = trainer.fit()
    return trainer.model, history


def data_fingerprint() -> dict:
    """SHA-256 of what the base model was trained on: chapter 1's corpus manifest, chapter 2's
    tokenizer and token-shard metadata. Same fingerprint, same training data (no git needed)."""
    return {
        "corpus_manifest_sha256": sha256_of(ensure_clean_corpus() / "manifest.json"),
        "tokenizer_sha256": sha256_of(tokenizer_path()),
        "token_shards_meta_sha256": sha256_of(ensure_token_shards() / "meta.json"),
    }


def build_record(
    model_config: ModelConfig, config: TrainingConfig, history: TrainingHistory, seconds: float
) -> dict:
    """How a model was built, written as build.json next to its weights."""
    steps_done = history.records[-1]["step"] if history.records else 0
    return {
        "model_config": model_config.to_dict(),
        "training_config": asdict(config),
        "steps_done": steps_done,
        "tokens_seen": steps_done * config.tokens_per_step,
        "final_val_loss": history.evaluations[-1]["val_loss"] if history.evaluations else None,
        "stopped_reason": history.stopped_reason,
        "data": data_fingerprint(),
        "train_seconds": round(seconds, 1),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def save_model_with_history(
    model: LanguageModel,
    target: Path,
    history: TrainingHistory | None = None,
    build: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Save `model` (its training history and build record too) as the folder `target`,
    atomically: the folder is built beside it and renamed into place only when complete.

    A diverged run or non-finite weights are refused: later chapters would build on them. An
    existing `target` is replaced only if the course wrote it (or `overwrite=True`).
    """
    if history is not None and history.diverged:
        raise ValueError(
            f"refusing to save a diverged model to {target}: {history.stopped_reason} "
            "Train again with a lower learning_rate (or resume from an earlier checkpoint)."
        )
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        raise ValueError(f"refusing to save {target}: the model has NaN or infinite weights.")
    with atomic_folder(target, overwrite=overwrite) as folder:
        model.save_pretrained(folder)
        if history is not None:
            (folder / "training_history.json").write_text(json.dumps(history.to_dict()))
        if build is not None:
            (folder / "build.json").write_text(json.dumps(build, indent=1))
    return target


RECIPE_KEYS = ("model_config", "training_config", "data")  # what decides the weights


def base_model_recipe(model_config: ModelConfig, config: TrainingConfig) -> dict:
    """What a base model is built from: its two configs and the digests of its training data."""
    recipe = {"model_config": model_config.to_dict(), "training_config": asdict(config)}
    return {**recipe, "data": data_fingerprint()}


def save_base_model(
    model: LanguageModel, history: TrainingHistory | None = None, build: dict | None = None
) -> Path:
    """Save the base model (history, build record) to artifacts_dir("ch06")/"base", and its
    recipe (the part of `build` that decides the weights) beside it for `ensure_base_model`."""
    target = artifacts_dir("ch06") / "base"
    recipe_path(target).unlink(missing_ok=True)  # a kill before the new recipe: rebuilt
    save_model_with_history(model, target, history, build)
    if build is not None:
        record_recipe(target, {key: build[key] for key in RECIPE_KEYS})
    return target


def ensure_base_model() -> LanguageModel:
    """The course's pre-trained base model: loaded from artifacts_dir("ch06")/"base" if it was
    built from today's default configs and data, otherwise trained with them (minutes on 2 CPU
    cores, with a progress bar and its ETA) and saved there first, with build.json saying how
    it was built and base.recipe.json what decides its weights."""
    folder = artifacts_dir("ch06") / "base"
    model_config, config = default_model_config(), default_training_config()
    if reason := stale_reason(folder, base_model_recipe(model_config, config)):
        print(
            f"Base model in the artifacts: {reason}. Training it (about "
            f"{BASE_TRAINING_MINUTES} minutes on 2 CPU cores)."
        )
        started = time.perf_counter()
        model, history = train_base_model(model_config, config)
        build = build_record(model_config, config, history, time.perf_counter() - started)
        save_base_model(model.cpu(), history, build)
    return LanguageModel.from_pretrained(folder)
