"""Chapter 7: every strategy, launched with torchrun on 2 processes, against one process; the
calculator against the ZeRO paper; the bad-input messages."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch

from chapters.ch04_blocks.model import LanguageModel, ModelConfig, count_parameters
from chapters.ch07_distributed.distributed import (
    CHAPTER_FOLDER,
    MODEL_SHAPES,
    LauncherError,
    LaunchError,
    ModelShape,
    ParallelLayout,
    RunConfig,
    batch_source,
    build_model,
    check_heads_divisible,
    communication_per_step,
    consolidate_checkpoint,
    language_model_loss,
    launch_with_torchrun,
    load_training_tokens,
    make_optimizer,
    memory_per_gpu,
    model_state_bytes,
    pipeline_bubble_fraction,
    setup_distributed,
    shard_rows,
    split_into_stages,
    train_steps,
)

SCRIPT = CHAPTER_FOLDER / "train_parallel.py"
RUN = RunConfig(steps=3)


def launch(strategy: str, folder, *extra: str) -> dict:
    result_file = folder / f"{strategy}.json"
    launch_with_torchrun(
        SCRIPT,
        "--strategy",
        strategy,
        "--steps",
        str(RUN.steps),
        "--result",
        str(result_file),
        *extra,
        nproc=2,
    )
    return json.loads(result_file.read_text())


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("ch07")
    checkpoint = folder / "checkpoint"
    launched = {
        "ddp": launch("ddp", folder),
        "fsdp": launch("fsdp", folder, "--checkpoint", str(checkpoint)),
        "tp": launch("tp", folder),
        "pp": launch("pp", folder, "--microbatches", "4"),
    }
    launched["checkpoint_folder"] = checkpoint
    return launched


@pytest.fixture(scope="module")
def reference_losses() -> list[float]:
    model = build_model(RUN)
    get_batch = batch_source(load_training_tokens(RUN), RUN)
    return train_steps(model, make_optimizer(model, RUN), get_batch, RUN.steps)


def test_ddp_loss_equals_single_process_loss(results, reference_losses):
    assert np.allclose(results["ddp"]["losses"], reference_losses, rtol=1e-4, atol=1e-5)


def test_fsdp_loss_equals_ddp_loss(results):
    assert np.allclose(results["fsdp"]["losses"], results["ddp"]["losses"], rtol=1e-4, atol=1e-5)


def test_fsdp_holds_half_the_parameter_and_optimizer_bytes_of_ddp(results):
    for rank in range(2):
        fsdp, ddp = results["fsdp"]["memory"][rank], results["ddp"]["memory"][rank]
        ratio = (fsdp["parameters"] + fsdp["optimizer"]) / (ddp["parameters"] + ddp["optimizer"])
        assert abs(ratio - 0.5) < 0.02


def test_ddp_rank_holds_the_whole_model(results):
    n_parameters = sum(p.numel() for p in build_model(RUN).parameters())
    assert results["ddp"]["memory"][0]["parameters"] == 4 * n_parameters


def test_sharded_checkpoint_round_trip_restores_the_loss(results):
    round_trip = results["fsdp"]["checkpoint"]
    assert round_trip["loss_after_load"] == round_trip["loss_trained"]
    assert round_trip["loss_fresh_before_load"] != round_trip["loss_trained"]


def test_consolidated_checkpoint_loads_with_from_pretrained(results, tmp_path):
    folder = consolidate_checkpoint(results["checkpoint_folder"], tmp_path / "model")
    model = LanguageModel.from_pretrained(folder)
    inputs, labels = batch_source(load_training_tokens(RUN), RUN)(RUN.steps, 0)
    rows = shard_rows(RUN.global_batch_size, 0, 2)
    with torch.no_grad():
        loss = language_model_loss(model(inputs[rows]), labels[rows]).item()
    assert loss == pytest.approx(results["fsdp"]["checkpoint"]["loss_trained"], abs=1e-5)


def test_tensor_parallel_logits_equal_unsharded_logits(results):
    inputs, _ = batch_source(load_training_tokens(RUN), RUN)(0, 0)
    with torch.no_grad():
        logits = build_model(RUN)(inputs)
    assert np.allclose(results["tp"]["logits_sample"], logits[0, :4, :4].numpy(), atol=1e-5)
    assert results["tp"]["logits_checksum"] == pytest.approx(logits.double().sum().item(), abs=1e-2)


def test_tensor_parallel_loss_equals_single_process_loss(results, reference_losses):
    assert np.allclose(results["tp"]["losses"], reference_losses, rtol=1e-4, atol=1e-5)


def test_pipeline_loss_equals_single_process_loss(results, reference_losses):
    assert np.allclose(results["pp"]["losses"], reference_losses, rtol=1e-4, atol=1e-5)


def test_pipeline_stages_hold_disjoint_halves(results):
    # each stage holds two of the four blocks plus its end of the (tied) embedding
    stage_bytes = [memory["parameters"] for memory in results["pp"]["memory"]]
    whole = results["ddp"]["memory"][0]["parameters"]
    embedding = 4 * RUN.vocab_size * RUN.d_model
    assert sum(stage_bytes) == pytest.approx(whole + embedding, rel=0.01)


def test_stages_run_one_after_another_equal_the_whole_model():
    model = build_model(RUN)
    inputs = torch.randint(0, RUN.vocab_size, (2, 16))
    first, last = split_into_stages(model, 2)
    with torch.no_grad():
        assert torch.equal(last(first(inputs)), model(inputs))


def test_launch_reports_indivisible_batch_from_the_ranks(tmp_path):
    with pytest.raises(LaunchError, match="does not split evenly"):
        launch_with_torchrun(SCRIPT, "--strategy", "ddp", "--global-batch-size", "7", nproc=2)


def test_script_without_launcher_says_how_to_launch():
    environment = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--strategy", "ddp"],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )
    assert result.returncode != 0
    assert "torchrun --standalone --nproc_per_node=2" in result.stderr


def test_setup_distributed_without_rank_raises_launcher_error(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(LauncherError, match="RANK"):
        setup_distributed("train.py")


def test_port_in_use_is_refused_before_launching():
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        with pytest.raises(LaunchError, match="already in use"):
            launch_with_torchrun(SCRIPT, port=squatter.getsockname()[1])


def test_shard_rows_rejects_a_batch_the_world_size_does_not_divide():
    with pytest.raises(ValueError, match="multiple of 4"):
        shard_rows(6, 0, 4)


def test_shard_rows_covers_the_batch_exactly_once():
    rows = [list(range(12))[shard_rows(12, rank, 3)] for rank in range(3)]
    assert sum(rows, []) == list(range(12))


def test_heads_that_do_not_divide_are_refused():
    with pytest.raises(ValueError, match="whole heads"):
        check_heads_divisible(4, 3)


@pytest.mark.parametrize("stage, published_gb", [(0, 120.0), (1, 31.4), (2, 16.6), (3, 1.9)])
def test_model_states_match_the_zero_paper(stage, published_gb):
    # Rajbhandari et al. 2019, Figure 1: 7.5B parameters, 64 GPUs, K = 12
    layout = ParallelLayout(data_parallel=64, zero_stage=stage)
    assert model_state_bytes(7.5e9, layout)["total"] / 1e9 == pytest.approx(published_gb, abs=0.05)


def test_zero3_communicates_one_and_a_half_times_data_parallel():
    shape = MODEL_SHAPES["7B"]
    plain = communication_per_step(shape, ParallelLayout(data_parallel=8))["data_parallel"]
    zero3 = communication_per_step(shape, ParallelLayout(data_parallel=8, zero_stage=3))
    assert zero3["data_parallel"] == pytest.approx(1.5 * plain)


def test_zero1_and_zero2_communicate_as_much_as_data_parallel():
    shape = MODEL_SHAPES["1B"]
    volumes = {
        stage: communication_per_step(shape, ParallelLayout(data_parallel=16, zero_stage=stage))[
            "total"
        ]
        for stage in (0, 1, 2)
    }
    assert volumes[0] == volumes[1] == volumes[2]


@pytest.mark.parametrize(
    "name, published", [("1B", 1.24e9), ("7B", 6.74e9), ("70B", 70.6e9), ("405B", 405.9e9)]
)
def test_model_shapes_have_their_published_parameter_counts(name, published):
    assert MODEL_SHAPES[name].n_params() == pytest.approx(published, rel=0.005)


@pytest.mark.parametrize("tie", [True, False])
def test_shape_parameter_count_agrees_with_chapter4(tie):
    config = ModelConfig(vocab_size=1000, d_model=96, n_layers=3, n_heads=6, tie_embeddings=tie)
    shape = ModelShape(
        "tiny",
        config.n_layers,
        config.d_model,
        config.n_heads,
        config.n_heads,
        config.d_ff,
        config.vocab_size,
        tie_embeddings=tie,
    )
    assert shape.n_params() == count_parameters(config)
    assert shape.n_params() == sum(p.numel() for p in LanguageModel(config).parameters())


def test_activation_checkpointing_lowers_activation_memory():
    shape, layout = MODEL_SHAPES["70B"], ParallelLayout(data_parallel=64, zero_stage=3)
    plain = memory_per_gpu(shape, layout)["activations"]
    checkpointed = memory_per_gpu(shape, replace(layout, activation_checkpointing=True))
    assert checkpointed["activations"] < plain / 5


def test_tensor_parallel_divides_model_states():
    shape = MODEL_SHAPES["70B"]
    one = memory_per_gpu(shape, ParallelLayout())
    eight = memory_per_gpu(shape, ParallelLayout(tensor_parallel=8))
    assert eight["weights"] == pytest.approx(one["weights"] / 8)


def test_layout_rejects_unknown_zero_stage():
    with pytest.raises(ValueError, match="zero_stage"):
        ParallelLayout(zero_stage=4)


def test_bubble_fraction_matches_the_gpipe_formula():
    assert pipeline_bubble_fraction(2, 4) == pytest.approx(0.2)
    assert pipeline_bubble_fraction(1, 4) == 0.0
    assert pipeline_bubble_fraction(8, 57) == pytest.approx(7 / 64)


def test_zero3_gathers_weights_again_for_every_microbatch():
    shape = MODEL_SHAPES["7B"]
    one = communication_per_step(shape, ParallelLayout(data_parallel=8, zero_stage=3))
    four = communication_per_step(
        shape, ParallelLayout(data_parallel=8, zero_stage=3, n_microbatches=4)
    )
    plain_four = communication_per_step(shape, ParallelLayout(data_parallel=8, n_microbatches=4))
    assert four["data_parallel"] == pytest.approx(4 * one["data_parallel"])
    assert plain_four["data_parallel"] == pytest.approx(one["data_parallel"] / 1.5)


def test_consolidating_into_a_folder_of_the_users_deletes_nothing(tmp_path):
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(json.dumps(asdict(ModelConfig())))
    (checkpoint / "__0_0.distcp").write_bytes(b"shard")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        consolidate_checkpoint(checkpoint, mine)
    with pytest.raises(ValueError, match="delete the shards"):
        consolidate_checkpoint(checkpoint, checkpoint)
    assert (mine / "notes.txt").read_text() == "precious"
    assert (checkpoint / "__0_0.distcp").read_bytes() == b"shard"
