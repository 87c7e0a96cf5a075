"""Chapter 6: the trainer (schedule, loss, clipping, accumulation, resume, divergence, errors).

Most tests use a tiny stand-in language model (an embedding, a norm, dropout and a linear
head) so that they run in a fraction of a second; the trainer only needs forward(ids) ->
logits and an optional `.config` with `context_length` and `to_dict`.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from chapters.ch06_pretraining.trainer import (
    IGNORE_INDEX,
    Trainer,
    TrainingConfig,
    TrainingHistory,
    build_optimizer,
    clip_by_global_norm,
    cross_entropy_loss,
    latest_checkpoint,
    lr_at,
    open_token_shard,
    open_tokenizer,
    random_window_batches,
    save_model_with_history,
    sequential_eval_batches,
)

VOCAB = 50


@dataclass
class TinyConfig:
    vocab_size: int = VOCAB
    context_length: int = 16
    d_model: int = 24

    def to_dict(self) -> dict:
        return asdict(self)


class TinyLanguageModel(torch.nn.Module):
    def __init__(self, config: TinyConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = torch.nn.Embedding(config.vocab_size, config.d_model)
        self.mix = torch.nn.Linear(config.d_model, config.d_model)
        self.norm = torch.nn.LayerNorm(config.d_model)
        self.dropout = torch.nn.Dropout(0.1)  # makes the RNG state matter for resume
        self.head = torch.nn.Linear(config.d_model, config.vocab_size, bias=False)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.dropout(torch.tanh(self.mix(self.embedding(token_ids))))
        return self.head(self.norm(hidden))


def tiny_model(seed: int = 0, **overrides) -> TinyLanguageModel:
    torch.manual_seed(seed)
    return TinyLanguageModel(TinyConfig(**overrides))


def tiny_config(**overrides) -> TrainingConfig:
    values = dict(
        steps=12,
        batch_size=4,
        context_length=16,
        warmup_steps=3,
        learning_rate=1e-2,
        min_lr=1e-3,
        eval_interval=0,
        log_interval=3,
    )
    values.update(overrides)
    return TrainingConfig(**values)


@pytest.fixture
def tokens() -> np.ndarray:
    return np.random.default_rng(0).integers(0, VOCAB, size=5000).astype(np.uint16)


def make_trainer(tokens, config=None, model=None, **kwargs) -> Trainer:
    config = config or tiny_config()
    get_batch = random_window_batches(tokens, config.batch_size, config.context_length, seed=1)
    kwargs.setdefault("show_progress", False)
    return Trainer(model or tiny_model(), config, get_batch, device="cpu", **kwargs)


# ---- learning-rate schedule ---------------------------------------------------------------


def test_lr_warm_up_is_linear_from_peak_over_warmup_steps():
    config = tiny_config(steps=100, warmup_steps=10, learning_rate=1e-3, min_lr=1e-4)
    assert lr_at(0, config) == pytest.approx(1e-4)
    assert lr_at(4, config) == pytest.approx(5e-4)


def test_lr_reaches_the_peak_at_the_end_of_warm_up():
    config = tiny_config(steps=100, warmup_steps=10, learning_rate=1e-3, min_lr=1e-4)
    assert lr_at(9, config) == pytest.approx(1e-3)
    assert lr_at(10, config) == pytest.approx(1e-3)


def test_lr_ends_exactly_on_the_floor_and_stays_there():
    config = tiny_config(steps=100, warmup_steps=10, learning_rate=1e-3, min_lr=1e-4)
    assert lr_at(99, config) == pytest.approx(1e-4)
    assert lr_at(500, config) == pytest.approx(1e-4)


def test_lr_is_halfway_between_peak_and_floor_halfway_through_the_decay():
    config = tiny_config(steps=101, warmup_steps=0, learning_rate=1e-3, min_lr=1e-4)
    assert lr_at(50, config) == pytest.approx((1e-3 + 1e-4) / 2)


def test_lr_decays_monotonically_after_warm_up():
    config = tiny_config(steps=200, warmup_steps=20)
    values = [lr_at(step, config) for step in range(20, 200)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


# ---- loss ---------------------------------------------------------------------------------


def test_stable_cross_entropy_matches_torch_on_random_logits():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 7, 11, generator=generator) * 5
    labels = torch.randint(0, 11, (3, 7), generator=generator)
    labels[0, :3] = IGNORE_INDEX
    ours = cross_entropy_loss(logits, labels)
    theirs = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(ours, theirs)


def test_stable_cross_entropy_gradient_matches_torch():
    logits = torch.randn(20, 13, requires_grad=True)
    labels = torch.randint(0, 13, (20,))
    (grad_ours,) = torch.autograd.grad(cross_entropy_loss(logits, labels), logits)
    (grad_theirs,) = torch.autograd.grad(F.cross_entropy(logits, labels), logits)
    torch.testing.assert_close(grad_ours, grad_theirs)


def test_stable_cross_entropy_stays_finite_for_huge_logits():
    logits = torch.tensor([[1e30, 0.0, -1e30], [5e4, 5e4, 0.0]])
    labels = torch.tensor([1, 0])
    loss = cross_entropy_loss(logits, labels)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels))


def test_untrained_model_loss_is_close_to_ln_vocab_size():
    model_module = pytest.importorskip("chapters.ch04_blocks.model")
    torch.manual_seed(0)
    config = model_module.ModelConfig(
        vocab_size=512, context_length=32, d_model=64, n_layers=2, n_heads=4
    )
    model = model_module.LanguageModel(config)
    ids = torch.randint(0, 512, (4, 32))
    with torch.no_grad():
        loss = cross_entropy_loss(model(ids[:, :-1]), ids[:, 1:])
    assert abs(float(loss) - math.log(512)) < 0.3


# ---- optimizer, clipping, accumulation -----------------------------------------------------


def test_weight_decay_applies_to_matrices_only():
    model = tiny_model()
    optimizer = build_optimizer(model, tiny_config(weight_decay=0.1))
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            assert group["weight_decay"] == (0.1 if parameter.dim() >= 2 else 0.0)


def test_clipping_scales_the_global_norm_down_to_the_limit_like_torch():
    torch.manual_seed(2)
    ours = [torch.nn.Parameter(torch.randn(5, 4)), torch.nn.Parameter(torch.randn(3))]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    for a, b in zip(ours, theirs, strict=True):
        a.grad = torch.randn_like(a) * 10
        b.grad = a.grad.clone()
    norm_before = clip_by_global_norm(ours, 1.0)
    torch_norm = torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    assert norm_before == pytest.approx(float(torch_norm), rel=1e-5)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a.grad, b.grad)
    clipped = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in ours))
    assert clipped == pytest.approx(1.0, rel=1e-4)


def test_clipping_leaves_gradients_below_the_limit_unchanged():
    parameter = torch.nn.Parameter(torch.zeros(4))
    parameter.grad = torch.tensor([0.1, -0.2, 0.0, 0.05])
    expected = parameter.grad.clone()
    clip_by_global_norm([parameter], 1.0)
    torch.testing.assert_close(parameter.grad, expected)


def test_accumulation_gives_the_same_gradient_as_one_large_batch():
    generator = torch.Generator().manual_seed(3)
    inputs = torch.randint(0, VOCAB, (8, 16), generator=generator)
    labels = torch.randint(0, VOCAB, (8, 16), generator=generator)
    labels[torch.rand(8, 16, generator=generator) < 0.3] = IGNORE_INDEX  # uneven masks

    def one_batch(step, micro_step):
        return inputs, labels

    def four_micro_batches(step, micro_step):
        rows = slice(2 * micro_step, 2 * micro_step + 2)
        return inputs[rows], labels[rows]

    big = Trainer(
        tiny_model(), tiny_config(batch_size=8), one_batch, device="cpu", show_progress=False
    )
    small = Trainer(
        tiny_model(),
        tiny_config(batch_size=2, grad_accumulation=4),
        four_micro_batches,
        device="cpu",
        show_progress=False,
    )
    big.model.eval(), small.model.eval()  # no dropout: the two passes must see the same net
    loss_big = big.accumulate_gradients(0)
    loss_small = small.accumulate_gradients(0)
    assert loss_small == pytest.approx(loss_big, rel=1e-5)
    for a, b in zip(big.model.parameters(), small.model.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)


# ---- data ---------------------------------------------------------------------------------


def test_random_windows_are_a_pure_function_of_step_and_micro_step(tokens):
    get_batch = random_window_batches(tokens, 4, 16, seed=5)
    first = get_batch(7, 1)
    get_batch(8, 0)  # drawing another batch in between changes nothing
    again = get_batch(7, 1)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], get_batch(7, 0)[0])


def test_labels_are_the_inputs_shifted_by_one_token(tokens):
    inputs, labels = random_window_batches(tokens, 4, 16, seed=5)(0, 0)
    assert inputs.dtype == labels.dtype == torch.long
    assert torch.equal(inputs[:, 1:], labels[:, :-1])


def test_sequential_eval_batches_walk_the_data_in_order(tokens):
    batches = list(sequential_eval_batches(tokens, 2, 10, max_batches=3))
    assert len(batches) == 3
    flat = torch.cat([inputs.flatten() for inputs, _ in batches])
    assert torch.equal(flat, torch.from_numpy(tokens[:60].astype(np.int64)))


# ---- resume and divergence -----------------------------------------------------------------


def test_resume_from_a_checkpoint_continues_bit_for_bit(tokens, tmp_path):
    uninterrupted = make_trainer(tokens)
    uninterrupted.fit()

    first = make_trainer(tokens, checkpoint_dir=tmp_path)
    first.fit(until_step=5)
    resumed = make_trainer(tokens, model=tiny_model(seed=99), checkpoint_dir=tmp_path)
    assert resumed.resume() == 5
    resumed.fit()

    assert resumed.step == uninterrupted.step == 12
    for (name, a), (_, b) in zip(
        uninterrupted.model.named_parameters(), resumed.model.named_parameters(), strict=True
    ):
        assert torch.equal(a, b), f"{name} differs after resume"
    assert resumed.history.step_losses == uninterrupted.history.step_losses


def test_checkpoint_is_written_atomically_with_a_json_pointer(tokens, tmp_path):
    trainer = make_trainer(
        tokens, tiny_config(steps=4, checkpoint_interval=2), checkpoint_dir=tmp_path
    )
    trainer.fit()
    folder = latest_checkpoint(tmp_path)
    assert folder.name == "step_0000004"
    state = json.loads((folder / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["training_config"]["steps"] == 4
    assert not list(tmp_path.glob(".step_*"))  # no temporary folders left behind


def test_injected_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tokens, tmp_path):
    model = tiny_model()
    calls = {"count": 0}

    def poison_after_six_calls(module, inputs, output):
        calls["count"] += 1
        return output * float("nan") if calls["count"] > 6 else output

    model.register_forward_hook(poison_after_six_calls)
    trainer = make_trainer(
        tokens, tiny_config(checkpoint_interval=2), model=model, checkpoint_dir=tmp_path
    )
    history = trainer.fit()
    assert history.diverged and "nan" in history.stopped_reason
    assert trainer.step == 6
    assert latest_checkpoint(tmp_path).name == "step_0000006"
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_the_last_step_is_checkpointed_once_when_the_interval_divides_the_steps(tokens, tmp_path):
    trainer = make_trainer(
        tokens, tiny_config(steps=4, checkpoint_interval=2), checkpoint_dir=tmp_path
    )
    saved_steps = []
    save = trainer.save
    trainer.save = lambda *args: saved_steps.append(trainer.step) or save(*args)
    trainer.fit()
    assert saved_steps == [2, 4]


def test_resume_falls_back_to_the_newest_complete_checkpoint(tokens, tmp_path):
    make_trainer(tokens, tiny_config(steps=4, checkpoint_interval=2), checkpoint_dir=tmp_path).fit()
    shutil.rmtree(tmp_path / "step_0000004")  # a kill while latest.json still names it
    assert json.loads((tmp_path / "latest.json").read_text())["folder"] == "step_0000004"
    resumed = make_trainer(tokens, tiny_config(steps=4), checkpoint_dir=tmp_path)
    assert resumed.resume() == 2
    (tmp_path / "latest.json").write_text("{not json")  # a damaged pointer: same fallback
    assert latest_checkpoint(tmp_path).name == "step_0000002"


def test_resume_from_a_folder_that_does_not_exist_says_so(tokens, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_trainer(tokens).resume(tmp_path / "nowhere")


@pytest.mark.parametrize("damaged", ["trainer_state.json", "model.safetensors"])
def test_a_damaged_checkpoint_is_named_with_what_to_do(tokens, tmp_path, damaged):
    make_trainer(tokens, tiny_config(steps=4), checkpoint_dir=tmp_path).fit()
    step_folder = tmp_path / "step_0000004"
    (step_folder / damaged).write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="is damaged.*Delete that step folder"):
        make_trainer(tokens, tiny_config(steps=4)).resume(step_folder)


def test_weights_that_explode_behind_a_calm_loss_stop_the_run(tokens, tmp_path):
    from chapters.ch04_blocks.model import LanguageModel, ModelConfig

    torch.manual_seed(0)  # RMSNorm hides the weights' scale: at lr 100 the loss stays calm
    model = LanguageModel(
        ModelConfig(vocab_size=VOCAB, context_length=16, d_model=32, n_layers=1, n_heads=2)
    )
    config = tiny_config(steps=15, learning_rate=100.0, min_lr=1.0, warmup_steps=2, log_interval=5)
    history = make_trainer(tokens, config, model=model, checkpoint_dir=tmp_path).fit()
    assert history.diverged and "weights' norm" in history.stopped_reason
    with pytest.raises(ValueError, match="refusing to save a diverged model"):
        save_model_with_history(model, tmp_path / "base", history)
    assert not (tmp_path / "base").exists()


def test_a_model_with_nan_weights_is_not_saved(tmp_path):
    from chapters.ch04_blocks.model import LanguageModel, ModelConfig

    model = LanguageModel(
        ModelConfig(vocab_size=VOCAB, context_length=16, d_model=32, n_layers=1, n_heads=2)
    )
    with torch.no_grad():
        model.token_embedding.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        save_model_with_history(model, tmp_path / "base")


def test_ensure_base_model_saves_nothing_when_training_diverged(tmp_path, monkeypatch):
    from chapters.ch06_pretraining import trainer as trainer_module

    monkeypatch.setenv("LLM_COURSE_ARTIFACTS", str(tmp_path))
    diverged = TrainingHistory(stopped_reason="diverged at step 3: the loss is nan")
    model = trainer_module.LanguageModel(trainer_module.default_model_config())
    monkeypatch.setattr(trainer_module, "train_base_model", lambda *args: (model, diverged))
    monkeypatch.setattr(trainer_module, "build_record", lambda *args: {})
    monkeypatch.setattr(trainer_module, "data_fingerprint", lambda: {"corpus": "tiny"})
    with pytest.raises(ValueError, match="diverged"):
        trainer_module.ensure_base_model()
    assert not (tmp_path / "ch06" / "base" / "model.safetensors").exists()


def test_save_model_with_history_refuses_a_folder_of_the_users(tmp_path):
    target = tmp_path / "my_model"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_model_with_history(tiny_model(), target)
    assert (target / "notes.txt").read_text() == "mine"


def test_a_loss_spike_beyond_the_factor_stops_the_run(tokens):
    model = tiny_model()
    calls = {"count": 0}

    def spike_at_call_25(module, inputs, output):
        calls["count"] += 1
        return output * 300.0 if calls["count"] == 25 else output

    model.register_forward_hook(spike_at_call_25)
    history = make_trainer(tokens, tiny_config(steps=40), model=model).fit()
    assert history.diverged and "x the mean" in history.stopped_reason
    assert len(history.step_losses) == 24


# ---- bad input ----------------------------------------------------------------------------


def test_missing_token_shard_names_the_path_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="ensure_token_shards"):
        open_token_shard(tmp_path / "train.bin")


def test_missing_tokenizer_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="ensure_tokenizer"):
        open_tokenizer(tmp_path / "tokenizer.json")


def test_context_longer_than_the_model_is_refused(tokens):
    with pytest.raises(ValueError, match="context_length=32.*context_length=16"):
        make_trainer(tokens, tiny_config(context_length=32))


def test_data_shorter_than_one_window_is_refused():
    with pytest.raises(ValueError, match="fewer than one batch"):
        random_window_batches(np.zeros(16, dtype=np.uint16), batch_size=8, context_length=16)


def test_random_windows_need_only_one_window_of_data_not_a_whole_batch():
    tokens = np.arange(17, dtype=np.uint16)  # one window of 16 + 1 tokens; a batch of 8 overlaps
    inputs, labels = random_window_batches(tokens, batch_size=8, context_length=16)(0, 0)
    assert inputs.shape == (8, 16) and torch.equal(inputs[:, 1:], labels[:, :-1])


def test_eval_batches_still_need_a_whole_batch_of_non_overlapping_windows():
    with pytest.raises(ValueError, match="fewer than one batch"):
        next(sequential_eval_batches(np.zeros(100, dtype=np.uint16), 8, 16))


def test_written_out_cross_entropy_refuses_a_label_outside_the_vocabulary():
    logits = torch.randn(2, 3, VOCAB)
    for bad in (-5, VOCAB):
        labels = torch.zeros(2, 3, dtype=torch.long)
        labels[1, 2] = bad
        with pytest.raises(ValueError, match=f"label {bad} is outside the {VOCAB} classes"):
            cross_entropy_loss(logits, labels)


def test_checkpoint_from_a_different_config_names_the_fields(tokens, tmp_path):
    make_trainer(tokens, tiny_config(steps=4), checkpoint_dir=tmp_path).fit()
    other = make_trainer(tokens, tiny_config(steps=4, learning_rate=5e-3), checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match=r"learning_rate \(checkpoint 0.01, now 0.005\)"):
        other.resume()


def test_checkpoint_from_a_different_model_names_the_fields(tokens, tmp_path):
    make_trainer(tokens, tiny_config(steps=4), checkpoint_dir=tmp_path).fit()
    other = make_trainer(tokens, tiny_config(steps=4), model=tiny_model(d_model=32))
    with pytest.raises(ValueError, match="model.d_model"):
        other.resume(tmp_path)


def test_invalid_training_config_says_what_is_wrong():
    with pytest.raises(ValueError, match="min_lr"):
        TrainingConfig(learning_rate=1e-3, min_lr=1e-2)
    with pytest.raises(ValueError, match="precision"):
        TrainingConfig(precision="fp8")


def test_training_config_round_trips_through_a_dict():
    config = tiny_config(precision="bf16")
    assert TrainingConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="Unknown TrainingConfig fields"):
        TrainingConfig.from_dict({**config.to_dict(), "lr": 1.0})


def test_bf16_autocast_trains_with_finite_loss_on_cpu(tokens):
    history = make_trainer(tokens, tiny_config(steps=3, precision="bf16")).fit()
    assert history.stopped_reason is None
    assert all(math.isfinite(loss) for loss in history.step_losses)


def test_history_logs_the_monitored_quantities(tokens):
    history = make_trainer(tokens, tiny_config(steps=6, log_interval=3), peak_flops=1e12).fit()
    record = history.records[-1]
    for key in ("train_loss", "train_perplexity", "grad_norm", "update_to_weight", "lr"):
        assert math.isfinite(record[key])
    assert record["tokens_per_second"] > 0 and record["mfu"] > 0
    assert record["train_perplexity"] == pytest.approx(math.exp(record["train_loss"]))


def test_benchmark_step_times_both_models_built_from_the_course_parts():
    from chapters.ch04_blocks.model import RMSNorm
    from chapters.ch06_pretraining import benchmark_step

    threads = torch.get_num_threads()
    try:
        best = benchmark_step.compare(threads=1, steps=1, rounds=1, with_compile=False)
    finally:
        torch.set_num_threads(threads)
    assert set(best) == {"gpt2-style", "course"}
    assert all(tokens_per_second > 0 for tokens_per_second in best.values())
    gpt2 = benchmark_step.build("gpt2-style")
    assert not any(isinstance(module, RMSNorm) for module in gpt2.modules())
    assert all(isinstance(block.ffn, benchmark_step.GELUFeedForward) for block in gpt2.blocks)
    # learned positions: the same token at two positions gets two different outputs
    with torch.no_grad():
        logits = gpt2(torch.full((1, 2), 7))
    assert not torch.allclose(logits[0, 0], logits[0, 1])


def test_datasheet_peaks_are_found_by_gpu_name_first_match_wins():
    from chapters.ch06_pretraining.trainer import datasheet_peak_flops

    bf16 = torch.bfloat16
    assert datasheet_peak_flops("NVIDIA H100 80GB HBM3", bf16) == 989e12
    assert datasheet_peak_flops("NVIDIA H100 PCIe", bf16) == 756e12
    assert datasheet_peak_flops("NVIDIA A100-SXM4-80GB", torch.float32) == 19.5e12  # not A10
    assert datasheet_peak_flops("NVIDIA L40S", bf16) == 362e12  # not L4
    assert datasheet_peak_flops("NVIDIA GeForce GTX 1080", bf16) is None


def test_hardware_peak_on_cpu_is_measured_and_flops_come_from_chapter_4():
    from chapters.ch04_blocks.model import LanguageModel, ModelConfig, flops_per_token
    from chapters.ch06_pretraining.trainer import hardware_peak_flops, training_flops_per_token

    peak, source = hardware_peak_flops("cpu", seconds=0.1)
    assert source == "measured large-matmul peak" and peak > 0
    config = ModelConfig(vocab_size=64, context_length=16, d_model=32, n_layers=2, n_heads=4)
    model = LanguageModel(config)
    assert training_flops_per_token(model) == flops_per_token(config)
    assert training_flops_per_token(model, 8) == flops_per_token(config, 8)
    assert training_flops_per_token(torch.nn.Linear(3, 2)) == 6 * 8  # no config: 6 x parameters
