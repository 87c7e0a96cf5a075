"""Train the chapter 4 model with one parallel strategy; torchrun starts one copy per rank.

    torchrun --standalone --nproc_per_node=2 chapters/ch07_distributed/train_parallel.py \
        --strategy ddp --steps 4 --result ddp.json

Strategies: ddp (data parallel), fsdp (fully sharded data parallel), tp (tensor parallel),
pp (pipeline parallel, GPipe). Every rank prints nothing; rank 0 prints the per-rank memory
table and the loss per step, and with --result writes them as JSON. On GPUs the same command
uses NCCL, on CPUs gloo: setup_distributed chooses.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist

from chapters.ch07_distributed.distributed import (
    RunConfig,
    apply_tensor_parallel,
    batch_source,
    build_model,
    build_pipeline,
    format_memory_table,
    gather_memory_reports,
    language_model_loss,
    load_sharded_checkpoint,
    load_training_tokens,
    make_optimizer,
    memory_report,
    print_rank0,
    save_sharded_checkpoint,
    setup_distributed,
    shard_rows,
    sync_tied_gradients,
    teardown_distributed,
    train_steps,
    wrap_data_parallel,
    wrap_fully_sharded,
)
from chapters.course import atomic_write

STRATEGIES = ("ddp", "fsdp", "tp", "pp")


def parse_arguments(argv: list[str]) -> tuple[str, RunConfig, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--strategy", choices=STRATEGIES, required=True)
    parser.add_argument("--result", type=Path, help="write losses and memory here (rank 0)")
    parser.add_argument("--checkpoint", type=Path, help="fsdp only: save a sharded checkpoint here")
    parser.add_argument("--microbatches", type=int, default=4, help="pp only")
    defaults = RunConfig()
    for name, value in asdict(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    arguments = parser.parse_args(argv)
    run = RunConfig(**{name: getattr(arguments, name) for name in asdict(defaults)})
    return arguments.strategy, run, arguments


def run_data_parallel(strategy: str, run: RunConfig, get_batch, context, arguments) -> dict:
    """ddp and fsdp: each rank trains on its own rows of every global batch."""
    rows = shard_rows(run.global_batch_size, context.rank, context.world_size)
    model = build_model(run)
    wrap = wrap_data_parallel if strategy == "ddp" else wrap_fully_sharded
    model = wrap(model, context)
    optimizer = make_optimizer(model, run)
    started = time.perf_counter()
    losses = train_steps(
        model,
        optimizer,
        get_batch,
        run.steps,
        rows=rows,
        average_over_ranks=True,
        device=context.device,
    )
    result = {
        "losses": losses,
        "seconds_per_step": (time.perf_counter() - started) / run.steps,
        "memory": gather_memory_reports(memory_report(model, optimizer)),
    }
    if strategy == "fsdp" and arguments.checkpoint is not None:
        result["checkpoint"] = check_checkpoint_round_trip(
            model, run, get_batch, context, arguments
        )
    return result


def check_checkpoint_round_trip(model, run: RunConfig, get_batch, context, arguments) -> dict:
    """Save the sharded model, load it into a fresh sharded model, compare their losses."""
    save_sharded_checkpoint(model, arguments.checkpoint)
    fresh = wrap_fully_sharded(
        build_model(RunConfig(**{**asdict(run), "seed": run.seed + 1})), context
    )
    inputs, labels = get_batch(run.steps, 0)  # a batch neither model trained on
    rows = shard_rows(run.global_batch_size, context.rank, context.world_size)
    inputs, labels = inputs[rows].to(context.device), labels[rows].to(context.device)
    with torch.no_grad():
        before = language_model_loss(fresh(inputs), labels).item()
        load_sharded_checkpoint(fresh, arguments.checkpoint)
        loaded = language_model_loss(fresh(inputs), labels).item()
        trained = language_model_loss(model(inputs), labels).item()
    return {"loss_trained": trained, "loss_fresh_before_load": before, "loss_after_load": loaded}


def run_tensor_parallel(run: RunConfig, get_batch, context) -> dict:
    """Every rank sees the whole batch and holds a slice of every block's matmuls."""
    model = apply_tensor_parallel(build_model(run), context)
    inputs, _ = get_batch(0, 0)
    with torch.no_grad():
        logits = model(inputs.to(context.device)).cpu()  # (B, T, V), identical on every rank
    optimizer = make_optimizer(model, run)
    started = time.perf_counter()
    losses = train_steps(model, optimizer, get_batch, run.steps, device=context.device)
    return {
        "losses": losses,
        "seconds_per_step": (time.perf_counter() - started) / run.steps,
        "memory": gather_memory_reports(memory_report(model, optimizer)),
        "logits_sample": logits[0, :4, :4].tolist(),
        "logits_checksum": logits.double().sum().item(),
    }


def run_pipeline_parallel(run: RunConfig, get_batch, context, n_microbatches: int) -> dict:
    """Rank r holds stage r; micro-batches flow rank 0 -> 1 forward and back again."""
    model = build_model(run)
    stage_module, schedule = build_pipeline(model, context, n_microbatches, run.global_batch_size)
    first, last = context.rank == 0, context.rank == context.world_size - 1
    tied_group = None
    if model.config.tie_embeddings and context.world_size > 1:
        tied_group = dist.new_group([0, context.world_size - 1])  # every rank must call new_group
    optimizer = make_optimizer(stage_module, run)
    losses, started = [], time.perf_counter()
    for step in range(run.steps):
        inputs, labels = get_batch(step, 0)
        inputs, labels = inputs.to(context.device), labels.to(context.device)
        optimizer.zero_grad(set_to_none=True)
        microbatch_losses: list[torch.Tensor] = []
        if first:
            schedule.step(inputs)
        elif last:
            schedule.step(target=labels, losses=microbatch_losses)
        else:
            schedule.step()
        sync_tied_gradients(stage_module, tied_group)
        optimizer.step()
        loss = torch.stack(microbatch_losses).mean() if last else torch.zeros(())
        loss = loss.detach().to(context.device)
        dist.broadcast(loss, src=context.world_size - 1)  # rank 0 prints what the last stage saw
        losses.append(loss.item())
    return {
        "losses": losses,
        "seconds_per_step": (time.perf_counter() - started) / run.steps,
        "memory": gather_memory_reports(memory_report(stage_module, optimizer)),
    }


def main(argv: list[str] | None = None) -> int:
    strategy, run, arguments = parse_arguments(sys.argv[1:] if argv is None else argv)
    context = setup_distributed(script=__file__)
    try:
        # rank 0 first: if the token shards must be built, only one process builds them
        if not context.is_main:
            dist.barrier()
        tokens = load_training_tokens(run)
        if context.is_main:
            dist.barrier()
        get_batch = batch_source(tokens, run)
        if strategy in ("ddp", "fsdp"):
            result = run_data_parallel(strategy, run, get_batch, context, arguments)
        elif strategy == "tp":
            result = run_tensor_parallel(run, get_batch, context)
        else:
            result = run_pipeline_parallel(run, get_batch, context, arguments.microbatches)
        result.update(
            strategy=strategy,
            world_size=context.world_size,
            backend=context.backend,
            run=asdict(run),
        )
        print_rank0(f"{strategy} on {context.world_size} ranks ({context.backend})")
        print_rank0(format_memory_table(result["memory"]))
        print_rank0("loss per step: " + ", ".join(f"{loss:.4f}" for loss in result["losses"]))
        if context.is_main and arguments.result is not None:
            with atomic_write(arguments.result) as file:
                json.dump(result, file, indent=2)
    finally:
        teardown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
