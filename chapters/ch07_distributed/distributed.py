# Generated from chapters/ch07_distributed/ch07_distributed.ipynb by `python setup/export_modules.py`. Do not edit:
# change the notebook's cells tagged for export and run that command again.


"""Distributed training for the course's model: process groups, the four strategies, the calculator.

Read top to bottom: joining a process group and launching with torchrun, per-rank memory
accounting, the experiment every strategy runs, then data parallelism (DDP), fully sharded
data parallelism (FSDP2, with sharded checkpoints), tensor parallelism (DTensor plans) and
pipeline parallelism (GPipe), and finally the memory and communication calculator for real
model sizes. `train_parallel.py` in this folder is the script torchrun starts.
"""

import json
import math
import os
import re
import socket
import subprocess
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.pipelining import PipelineStage, ScheduleGPipe
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    RowwiseParallel,
    parallelize_module,
)
from torch.nn.parallel import DistributedDataParallel

from chapters.ch04_blocks.model import LanguageModel, ModelConfig
from chapters.ch06_pretraining.trainer import GetBatch, cross_entropy_loss, random_window_batches
from chapters.course import REPO_ROOT, atomic_folder, atomic_write, check_replaceable

CHAPTER_FOLDER = REPO_ROOT / "chapters" / "ch07_distributed"
LAUNCH_HINT = "torchrun --standalone --nproc_per_node=2 {script}"


class LauncherError(RuntimeError):
    """The script was started without the environment a launcher such as torchrun provides."""


@dataclass(frozen=True)
class DistributedContext:
    """Who this process is: its rank among `world_size` processes, and where it computes."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(script: str = "SCRIPT.py") -> DistributedContext:
    """Join the process group that torchrun prepared: NCCL on GPUs, gloo on CPUs.

    torchrun exports RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT to every process
    it starts; without them there is no group to join, so we say how to launch instead.
    """
    missing = [
        name
        for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
        if name not in os.environ
    ]
    if missing:
        raise LauncherError(
            f"{', '.join(missing)} not set: this script runs as one of several processes and "
            "expects a launcher to start them. Launch it with\n    "
            + LAUNCH_HINT.format(script=script)
            + "\n(or from Python: launch_with_torchrun(script, nproc=2))."
        )
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if torch.cuda.is_available():
        backend, device = "nccl", torch.device("cuda", local_rank)
        torch.cuda.set_device(device)  # one GPU per process
    else:
        backend, device = "gloo", torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, device_id=device if backend == "nccl" else None)
    return DistributedContext(rank, local_rank, world_size, device, backend)


def teardown_distributed() -> None:
    """Leave the process group (every process must call this before exiting)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def print_rank0(*args, **kwargs) -> None:
    """print, but only on rank 0: otherwise every message appears world_size times."""
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(*args, **kwargs, flush=True)


class LaunchError(RuntimeError):
    """torchrun (or one of the processes it started) failed; the message holds their output."""


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on `port`, so a rendezvous server can bind it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def launch_with_torchrun(
    script: str | Path,
    *script_args: str,
    nproc: int = 2,
    port: int | None = None,
    timeout: float = 600.0,
) -> str:
    """Start `nproc` copies of `script` with torchrun on this machine and return their output.

    Without a port, `--standalone` lets torchrun pick a free one. With a port (as on a cluster,
    where every node must agree on it) we check first that it is free, because the error
    torchrun gives for a taken port is buried in a long traceback.
    """
    script = Path(script)
    if not script.is_file():
        raise FileNotFoundError(f"No script at {script}: pass the path of a .py file to launch.")
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    if port is None:
        command.append("--standalone")
    else:
        if not port_is_free(port):
            raise LaunchError(
                f"Port {port} is already in use (another training run, or a notebook that did "
                "not shut down its process group?). Pick another port, stop the process "
                "holding it (`lsof -i :PORT` shows it), or omit `port` so that torchrun "
                "--standalone chooses a free one."
            )
        command += ["--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}"]
    command += [str(script), *script_args]
    environment = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=environment, cwd=REPO_ROOT
    )
    if result.returncode != 0:
        output = result.stdout + result.stderr
        raise LaunchError(
            f"{' '.join(command[1:])} failed with exit code {result.returncode}.\n"
            f"Errors raised on the ranks:\n{_rank_errors(output)}\n"
            f"Last lines of the output:\n{_tail(output)}"
        )
    return result.stdout


def _rank_errors(text: str) -> str:
    """The exception lines ('[rank0]: ValueError: ...') of a failed run, each once."""
    errors = []
    for line in text.splitlines():
        message = re.sub(r"^\[rank\d+\]:\s*", "", line)
        is_error = re.match(r"^[\w.]*(Error|Exception)\b.*:", message) is not None
        if is_error and "ChildFailedError" not in message and message not in errors:
            errors.append(message)
    return "\n".join(errors) or "(none found: see the output below)"


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


@dataclass
class RunConfig:
    """What every strategy trains: the same tiny model on the same global batches."""

    steps: int = 4
    global_batch_size: int = 8
    context_length: int = 32
    learning_rate: float = 3e-3
    seed: int = 0
    d_model: int = 64
    n_layers: int = 4
    n_heads: int = 4
    vocab_size: int = 4096
    tokens: str = "random"  # "random" or "ch02" (the course's token shards)

    def model_config(self) -> ModelConfig:
        return ModelConfig(
            vocab_size=self.vocab_size,
            context_length=self.context_length,
            d_model=self.d_model,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
        )


def build_model(run: RunConfig) -> LanguageModel:
    """The chapter 4 model, initialised identically on every rank (same seed, same order)."""
    torch.manual_seed(run.seed)
    return LanguageModel(run.model_config())


def load_training_tokens(run: RunConfig) -> np.ndarray:
    """Token ids to train on: chapter 2's training shard, or deterministic random ids.

    The random ids exist so that a test can launch the scripts without building the corpus
    and tokenizer first; the strategies compute the same thing on either.
    """
    if run.tokens == "ch02":
        from chapters.ch02_tokenizer.tokenizer import load_tokens

        tokens = load_tokens("train")  # builds corpus, tokenizer and shards on first use
        if int(tokens.max()) >= run.vocab_size:
            raise ValueError(
                f"The token shards hold ids up to {int(tokens.max())}, but the model's "
                f"vocab_size is {run.vocab_size}: pass --vocab-size "
                f"{int(tokens.max()) + 1} (the tokenizer's vocabulary size)."
            )
        return tokens
    if run.tokens != "random":
        raise ValueError(f"tokens must be 'random' or 'ch02', not {run.tokens!r}.")
    return np.random.default_rng(1234).integers(0, run.vocab_size, 200_000).astype(np.uint16)


def batch_source(tokens: np.ndarray, run: RunConfig) -> GetBatch:
    """Chapter 6's `get_batch(step, micro_step)`: the same global batch on every rank."""
    return random_window_batches(tokens, run.global_batch_size, run.context_length, run.seed)


def shard_rows(batch_size: int, rank: int, world_size: int) -> slice:
    """The rows of a global batch that `rank` processes in data parallelism."""
    if batch_size % world_size != 0:
        raise ValueError(
            f"The global batch of {batch_size} sequences does not split evenly over "
            f"{world_size} processes. Choose a batch size that is a multiple of {world_size} "
            f"(e.g. {world_size * max(1, batch_size // world_size)}) or launch with "
            "--nproc_per_node set to a divisor of the batch size."
        )
    per_rank = batch_size // world_size
    return slice(rank * per_rank, (rank + 1) * per_rank)


def make_optimizer(model: nn.Module, run: RunConfig) -> torch.optim.Optimizer:
    """Plain AdamW: the sharded strategies must reproduce exactly its updates."""
    return torch.optim.AdamW(model.parameters(), lr=run.learning_rate, weight_decay=0.1)


language_model_loss = cross_entropy_loss  # chapter 6's loss: mean over the (B, T) labels


def local_bytes(tensor: torch.Tensor) -> int:
    """Bytes this process actually stores for `tensor` (only its own shard of a DTensor)."""
    if isinstance(tensor, DTensor):
        tensor = tensor.to_local()
    return tensor.numel() * tensor.element_size()


def memory_report(
    model: nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> dict[str, int]:
    """Bytes of parameters, gradients and optimizer state held by this process."""
    parameters = list(model.parameters())  # a tied weight appears once
    report = {
        "parameters": sum(local_bytes(p) for p in parameters),
        "gradients": sum(local_bytes(p.grad) for p in parameters if p.grad is not None),
        "optimizer": 0,
    }
    if optimizer is not None:
        report["optimizer"] = sum(
            local_bytes(value)
            for state in optimizer.state.values()
            for value in state.values()
            if torch.is_tensor(value)
        )
    report["total"] = report["parameters"] + report["gradients"] + report["optimizer"]
    return report


def gather_memory_reports(report: dict[str, int]) -> list[dict[str, int]]:
    """Every rank's memory report, in rank order (a collective: all ranks must call it)."""
    reports: list = [None] * dist.get_world_size()
    dist.all_gather_object(reports, report)
    return reports


def format_memory_table(reports: list[dict[str, int]]) -> str:
    """One line per rank, in KiB, for rank 0 to print."""
    lines = [
        f"{'rank':>4} {'params KiB':>11} {'grads KiB':>10} {'optim KiB':>10} {'total KiB':>10}"
    ]
    for rank, r in enumerate(reports):
        lines.append(
            f"{rank:>4} {r['parameters'] / 1024:>11.1f} {r['gradients'] / 1024:>10.1f} "
            f"{r['optimizer'] / 1024:>10.1f} {r['total'] / 1024:>10.1f}"
        )
    return "\n".join(lines)


def train_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    get_batch: GetBatch,
    steps: int,
    rows: slice = slice(None),
    average_over_ranks: bool = False,
    device: torch.device | str = "cpu",
) -> list[float]:
    """Train for `steps` steps on rows `rows` of each global batch; return the loss per step.

    With `average_over_ranks` the reported loss is the mean over the data-parallel ranks,
    i.e. the loss of the whole global batch (each rank only saw its own rows). `device` is
    where the model lives (the rank's GPU under NCCL).
    """
    losses = []
    for step in range(steps):
        inputs, labels = get_batch(step, 0)  # (B, T) each, the whole global batch
        inputs, labels = inputs[rows].to(device), labels[rows].to(device)
        loss = language_model_loss(model(inputs), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        reported = loss.detach().clone()
        if average_over_ranks:
            dist.all_reduce(reported)  # gloo has no AVG: sum, then divide
            reported /= dist.get_world_size()
        losses.append(reported.item())
    return losses


def wrap_data_parallel(model: nn.Module, context: DistributedContext) -> nn.Module:
    """Replicate the model; DDP all-reduces (averages) gradients during backward."""
    model = model.to(context.device)
    device_ids = [context.local_rank] if context.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def wrap_fully_sharded(model: LanguageModel, context: DistributedContext) -> LanguageModel:
    """FSDP2: shard every block's parameters over the ranks, then the rest at the root.

    Each `fully_shard(block)` makes one communication unit: its parameters are all-gathered
    just before the block runs and freed again after, so at most one block is whole at a time.
    """
    mesh = init_device_mesh(context.device.type, (context.world_size,))
    model = model.to(context.device)
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)  # embedding, final norm, (tied) head
    return model


def save_sharded_checkpoint(model: nn.Module, folder: str | Path) -> None:
    """Every rank writes its own shards (torch.distributed.checkpoint); rank 0 adds config.json."""
    folder = Path(folder)
    with warnings.catch_warnings():  # re-saving into the same folder is intended: overwrite
        warnings.filterwarnings("ignore", message="Detected an existing checkpoint")
        dcp.save({"model": get_model_state_dict(model)}, checkpoint_id=folder)
    if dist.get_rank() == 0:
        with atomic_write(folder / "config.json") as file:
            json.dump(asdict(model.config), file, indent=2)
    dist.barrier()


def load_sharded_checkpoint(model: nn.Module, folder: str | Path) -> None:
    """Load a checkpoint saved by any number of ranks into this (sharded) model, in place."""
    state = {"model": get_model_state_dict(model)}
    dcp.load(state, checkpoint_id=Path(folder))
    set_model_state_dict(model, state["model"])


def consolidate_checkpoint(
    checkpoint_folder: str | Path, output_folder: str | Path, overwrite: bool = False
) -> Path:
    """Turn a sharded checkpoint into the course's single-file format (safetensors + config.json).

    Runs in one ordinary process: DCP reads every shard and places it into a whole model. An
    existing `output_folder` is replaced only if the course wrote it (or `overwrite=True`).
    """
    checkpoint_folder, output_folder = Path(checkpoint_folder), Path(output_folder)
    if output_folder.resolve() == checkpoint_folder.resolve():
        raise ValueError(
            f"output_folder is the checkpoint folder {checkpoint_folder}: writing there would "
            "delete the shards being read. Choose another output folder."
        )
    check_replaceable(output_folder, overwrite=overwrite)  # before the slow part
    config_file = checkpoint_folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{config_file} is missing: is {checkpoint_folder} a checkpoint "
            "written by save_sharded_checkpoint?"
        )
    model = LanguageModel(ModelConfig(**json.loads(config_file.read_text())))
    state = {"model": model.state_dict()}
    with warnings.catch_warnings():  # DCP warns that it runs without a process group: intended
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single")
        dcp.load(state, checkpoint_id=checkpoint_folder, no_dist=True)
    model.load_state_dict(state["model"])
    with atomic_folder(output_folder, overwrite=overwrite) as temporary:  # never half a model
        model.save_pretrained(temporary)
    return output_folder


def check_heads_divisible(n_heads: int, tensor_parallel_size: int) -> None:
    """Tensor parallelism splits attention by whole heads, so the heads must divide evenly."""
    if n_heads % tensor_parallel_size != 0:
        raise ValueError(
            f"{n_heads} attention heads cannot be split over {tensor_parallel_size} ranks: "
            "tensor parallelism gives each rank whole heads (rotary embeddings rotate pairs "
            "inside a head). Launch with --nproc_per_node set to a divisor of "
            f"{n_heads}, or build the model with a multiple of {tensor_parallel_size} heads."
        )


def tensor_parallel_plan() -> dict[str, ParallelStyle]:
    """Megatron-style plan for one block: split the first matmul by columns, the second by rows.

    q/k/v and w1/w3 keep whole heads / whole hidden units on each rank, so attention and SiLU
    run locally; out_proj and w2 produce partial sums that one all-reduce per sublayer adds up.
    """
    return {
        "attention.q_proj": ColwiseParallel(),
        "attention.k_proj": ColwiseParallel(),
        "attention.v_proj": ColwiseParallel(),
        "attention.out_proj": RowwiseParallel(),
        "ffn.w1": ColwiseParallel(),
        "ffn.w3": ColwiseParallel(),
        "ffn.w2": RowwiseParallel(),
    }


def apply_tensor_parallel(model: LanguageModel, context: DistributedContext) -> LanguageModel:
    """Shard every block's matmuls over all ranks; embedding, norms and head stay replicated."""
    check_heads_divisible(model.config.n_heads, context.world_size)
    if model.config.d_ff % context.world_size != 0:
        raise ValueError(
            f"d_ff={model.config.d_ff} does not split over {context.world_size} "
            "ranks: choose a d_ff that is a multiple of the world size."
        )
    mesh = init_device_mesh(context.device.type, (context.world_size,))
    model = model.to(context.device)
    for block in model.blocks:
        parallelize_module(block, mesh, tensor_parallel_plan())
        # chapter 3's forward then runs on this rank's heads and merges them into a
        # (B, T, d_model / world_size) input for the row-sharded out_proj
        block.attention.n_heads //= context.world_size
    return model


class StageModule(nn.Module):
    """A consecutive slice of the model: the first stage embeds, the last one predicts."""

    def __init__(
        self,
        blocks: list[nn.Module],
        token_embedding: nn.Module | None = None,
        final_norm: nn.Module | None = None,
        lm_head: nn.Module | None = None,
        embedding_dropout: nn.Module | None = None,
    ):
        super().__init__()
        self.token_embedding = token_embedding
        self.embedding_dropout = embedding_dropout or nn.Identity()
        self.blocks = nn.ModuleList(blocks)
        self.final_norm = final_norm
        self.lm_head = lm_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.token_embedding is not None:
            x = self.embedding_dropout(self.token_embedding(x))  # (B, T) ids -> (B, T, C)
        for block in self.blocks:
            x = block(x)
        if self.lm_head is not None:
            x = self.lm_head(self.final_norm(x)).float()  # (B, T, C) -> (B, T, V)
        return x


def split_into_stages(model: LanguageModel, n_stages: int) -> list[StageModule]:
    """Cut the model into `n_stages` pieces with equally many blocks each.

    With tied embeddings, the first stage's embedding and the last stage's head start as the
    same tensor but end up on different ranks: `sync_tied_gradients` keeps them equal.
    """
    n_layers = len(model.blocks)
    if n_layers % n_stages != 0:
        raise ValueError(
            f"{n_layers} blocks do not split into {n_stages} equal pipeline stages: "
            f"launch with a number of processes that divides {n_layers}."
        )
    per_stage = n_layers // n_stages
    stages = []
    for index in range(n_stages):
        first, last = index == 0, index == n_stages - 1
        stages.append(
            StageModule(
                list(model.blocks[index * per_stage : (index + 1) * per_stage]),
                token_embedding=model.token_embedding if first else None,
                embedding_dropout=model.embedding_dropout if first else None,
                final_norm=model.final_norm if last else None,
                lm_head=model.lm_head if last else None,
            )
        )
    return stages


def tied_weight(stage: StageModule) -> nn.Parameter | None:
    """The embedding (first stage) or head (last stage) weight that the full model ties."""
    if stage.token_embedding is not None:
        return stage.token_embedding.weight
    if stage.lm_head is not None:
        return stage.lm_head.weight
    return None


def sync_tied_gradients(stage: StageModule, tied_group: dist.ProcessGroup | None) -> None:
    """Add the gradients of the embedding and the head copy, as one tied weight would receive."""
    weight = tied_weight(stage)
    if tied_group is not None and weight is not None and weight.grad is not None:
        dist.all_reduce(weight.grad, group=tied_group)


def build_pipeline(
    model: LanguageModel, context: DistributedContext, n_microbatches: int, global_batch_size: int
) -> tuple[StageModule, ScheduleGPipe]:
    """This rank's stage module and a GPipe schedule that feeds it `n_microbatches` micro-batches."""
    if global_batch_size % n_microbatches != 0:
        raise ValueError(
            f"A batch of {global_batch_size} does not split into {n_microbatches} "
            "equal micro-batches: choose a divisor of the batch size."
        )
    stage_module = split_into_stages(model, context.world_size)[context.rank].to(context.device)
    stage = PipelineStage(stage_module, context.rank, context.world_size, context.device)
    schedule = ScheduleGPipe(stage, n_microbatches=n_microbatches, loss_fn=language_model_loss)
    return stage_module, schedule


def pipeline_bubble_fraction(n_stages: int, n_microbatches: int) -> float:
    """Share of a GPipe step each stage spends idle: (p - 1) / (m + p - 1)."""
    return (n_stages - 1) / (n_microbatches + n_stages - 1)


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a decoder-only transformer that memory and communication depend on."""

    name: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_ff: int
    vocab_size: int
    tie_embeddings: bool = False

    def n_params(self) -> int:
        """Weights of attention (with grouped KV heads), SwiGLU, norms and embeddings."""
        head_dim = self.d_model // self.n_heads
        attention = 2 * self.d_model * self.d_model + 2 * self.d_model * self.n_kv_heads * head_dim
        feed_forward = 3 * self.d_model * self.d_ff  # w1, w3 (d -> d_ff) and w2 (d_ff -> d)
        per_layer = attention + feed_forward + 2 * self.d_model  # + two RMSNorm weights
        embeddings = self.vocab_size * self.d_model * (1 if self.tie_embeddings else 2)
        return self.n_layers * per_layer + embeddings + self.d_model


# Public shapes of the Llama family (Llama 3.2 1B, Llama 2 7B, Llama 3 70B, Llama 3.1 405B).
MODEL_SHAPES = {
    "1B": ModelShape("1B", 16, 2048, 32, 8, 8192, 128_256, tie_embeddings=True),
    "7B": ModelShape("7B", 32, 4096, 32, 32, 11_008, 32_000),
    "70B": ModelShape("70B", 80, 8192, 64, 8, 28_672, 128_256),
    "405B": ModelShape("405B", 126, 16_384, 128, 8, 53_248, 128_256),
}


# Mixed-precision Adam, as counted by the ZeRO paper (Rajbhandari et al., 2019, section 3.1):
# bf16 weights (2) and gradients (2), plus K = 12 bytes of fp32 optimizer state per parameter
# (master weights, Adam momentum, Adam variance: 4 bytes each). 16 bytes per parameter in all.
WEIGHT_BYTES, GRADIENT_BYTES, OPTIMIZER_BYTES = 2, 2, 12


@dataclass(frozen=True)
class ParallelLayout:
    """How a cluster is used: data x tensor x pipeline parallel, ZeRO stage, batch shape."""

    data_parallel: int = 1
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    zero_stage: int = 0
    activation_checkpointing: bool = False
    micro_batch_size: int = 1
    sequence_length: int = 4096
    n_microbatches: int = 1

    def __post_init__(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage must be 0, 1, 2 or 3, not {self.zero_stage}.")
        for name in (
            "data_parallel",
            "tensor_parallel",
            "pipeline_parallel",
            "micro_batch_size",
            "sequence_length",
            "n_microbatches",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}.")

    @property
    def n_gpus(self) -> int:
        return self.data_parallel * self.tensor_parallel * self.pipeline_parallel


def model_state_bytes(n_params: float, layout: ParallelLayout) -> dict[str, float]:
    """Bytes per GPU of weights, gradients and optimizer state.

    Tensor and pipeline parallelism give each GPU 1/(TP x PP) of the parameters. ZeRO then
    partitions over the data-parallel ranks: stage 1 the optimizer state, stage 2 also the
    gradients, stage 3 also the weights.
    """
    local = n_params / (layout.tensor_parallel * layout.pipeline_parallel)
    dp, stage = layout.data_parallel, layout.zero_stage
    states = {
        "weights": local * WEIGHT_BYTES / (dp if stage >= 3 else 1),
        "gradients": local * GRADIENT_BYTES / (dp if stage >= 2 else 1),
        "optimizer": local * OPTIMIZER_BYTES / (dp if stage >= 1 else 1),
    }
    states["total"] = sum(states.values())
    return states


def layers_per_stage(shape: ModelShape, layout: ParallelLayout) -> int:
    """Blocks on the fullest pipeline stage (126 layers over 16 stages: 8 on most of them)."""
    return math.ceil(shape.n_layers / layout.pipeline_parallel)


def activation_bytes(shape: ModelShape, layout: ParallelLayout) -> float:
    """Bytes per GPU of activations kept for the backward pass (bf16), at the peak.

    Per layer and micro-batch a block stores about 34 * s * b * h bytes (Korthikanti et al.,
    2022, with flash attention so the s x s scores are not kept), split over TP ranks with
    sequence parallelism. Checkpointing keeps only each block's input (2 * s * b * h) and
    recomputes one block at a time. With 1F1B the first pipeline stage holds PP micro-batches
    of L / PP layers: L layers' worth, whatever PP is.
    """
    s, b, h = layout.sequence_length, layout.micro_batch_size, shape.d_model
    full_layer = 34 * s * b * h / layout.tensor_parallel
    in_flight = min(layout.pipeline_parallel, layout.n_microbatches)
    layers_held = layers_per_stage(shape, layout) * in_flight
    if layout.activation_checkpointing:
        return layers_held * 2 * s * b * h / layout.tensor_parallel + full_layer
    return layers_held * full_layer


def memory_per_gpu(shape: ModelShape, layout: ParallelLayout) -> dict[str, float]:
    """Model states plus activations per GPU, in bytes."""
    if shape.n_heads % layout.tensor_parallel != 0:
        raise ValueError(
            f"{shape.name}: {shape.n_heads} heads do not split over "
            f"tensor_parallel={layout.tensor_parallel}."
        )
    memory = model_state_bytes(shape.n_params(), layout)
    memory["activations"] = activation_bytes(shape, layout)
    memory["total"] += memory["activations"]
    return memory


def ring_all_reduce_bytes(payload_bytes: float, n_ranks: int) -> float:
    """Bytes each rank sends in a ring all-reduce: a reduce-scatter plus an all-gather."""
    return 2 * (n_ranks - 1) / n_ranks * payload_bytes


def communication_per_step(shape: ModelShape, layout: ParallelLayout) -> dict[str, float]:
    """Bytes each GPU sends per optimizer step, by kind of parallelism.

    Data parallel: one all-reduce of the bf16 gradients per step, after accumulating the
    micro-batches (ZeRO 1 and 2 replace it by a reduce-scatter plus an all-gather: the same
    volume). ZeRO-3 all-gathers the weights for the forward and again for the backward pass and
    reduce-scatters the gradients: 1.5x that volume (ZeRO paper, section 7), and for every
    micro-batch, since no rank keeps the whole weights between micro-batches. Tensor parallel: two
    all-reduces of the (b, s, h) activations per layer forward and two backward (three forward
    with checkpointing, which reruns the forward). Pipeline: one activation forward and one
    gradient backward per micro-batch at each stage boundary.
    """
    local_params = shape.n_params() / (layout.tensor_parallel * layout.pipeline_parallel)
    dp, tp = layout.data_parallel, layout.tensor_parallel
    gradient_sync = ring_all_reduce_bytes(local_params * GRADIENT_BYTES, dp)
    data = gradient_sync * (1.5 * layout.n_microbatches if layout.zero_stage == 3 else 1.0)
    activation = layout.micro_batch_size * layout.sequence_length * shape.d_model * WEIGHT_BYTES
    all_reduces_per_layer = 6 if layout.activation_checkpointing else 4
    layers_here = layers_per_stage(shape, layout)
    tensor = (
        layout.n_microbatches
        * layers_here
        * all_reduces_per_layer
        * ring_all_reduce_bytes(activation, tp)
    )
    pipeline = 0.0
    if layout.pipeline_parallel > 1:
        pipeline = layout.n_microbatches * 2 * activation / tp
    return {
        "data_parallel": data,
        "tensor_parallel": tensor,
        "pipeline_parallel": pipeline,
        "total": data + tensor + pipeline,
    }
