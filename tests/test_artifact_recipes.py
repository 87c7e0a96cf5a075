"""Artifacts record what built them, and the `ensure_*` helpers rebuild what no longer matches
(issue: change SFT_TRAINING or a task family and re-run, and the old model was loaded)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from chapters import course
from chapters.ch04_blocks.model import LanguageModel, ModelConfig
from chapters.ch06_pretraining import trainer
from chapters.ch08_sft import sft
from chapters.ch09_alignment import alignment

TINY = ModelConfig(vocab_size=300, context_length=16, d_model=32, n_layers=1, n_heads=2)


def test_a_recipe_is_current_only_when_every_part_matches(tmp_path):
    artifact = tmp_path / "thing.bin"
    assert course.stale_reason(artifact, {"a": 1}) == "it is not there yet"
    artifact.write_bytes(b"x")
    assert "no record" in course.stale_reason(artifact, {"a": 1})
    course.record_recipe(artifact, {"a": 1, "b": {"c": (2, 3)}})
    assert course.stale_reason(artifact, {"a": 1, "b": {"c": [2, 3]}}) is None
    assert "(b)" in course.stale_reason(artifact, {"a": 1, "b": {"c": [2, 4]}})
    assert "(a, z)" in course.stale_reason(artifact, {"a": 2, "b": {"c": [2, 3]}, "z": 0})
    course.recipe_path(artifact).write_text("{damaged")
    assert "damaged" in course.stale_reason(artifact, {"a": 1})


def test_a_folder_digest_follows_its_files_but_not_the_writers_marker(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    before = course.digest_of(tmp_path)
    (tmp_path / ".written-by-llm-course").write_text("marker")
    assert course.digest_of(tmp_path) == before
    (tmp_path / "model.safetensors").write_bytes(b"other weights")
    assert course.digest_of(tmp_path) != before


@pytest.fixture
def artifacts(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_COURSE_ARTIFACTS", str(tmp_path))
    return tmp_path


def test_base_model_is_retrained_when_its_config_or_data_changes(artifacts, monkeypatch):
    trained = []

    def train(model_config, config):
        trained.append(config.steps)
        return LanguageModel(TINY), trainer.TrainingHistory()

    def build(model_config, config, history, seconds):
        return {
            "model_config": model_config.to_dict(),
            "training_config": config.__dict__,
            "data": trainer.data_fingerprint(),
        }

    monkeypatch.setattr(trainer, "default_model_config", lambda: TINY)
    monkeypatch.setattr(trainer, "data_fingerprint", lambda: {"corpus": "one"})
    monkeypatch.setattr(trainer, "train_base_model", train)
    monkeypatch.setattr(trainer, "build_record", build)
    steps = trainer.default_training_config().steps
    trainer.ensure_base_model()
    trainer.ensure_base_model()
    assert trained == [steps]  # built once, then loaded
    monkeypatch.setattr(
        trainer, "default_training_config", lambda: trainer.TrainingConfig(steps=70)
    )
    trainer.ensure_base_model()
    monkeypatch.setattr(trainer, "data_fingerprint", lambda: {"corpus": "two"})
    trainer.ensure_base_model()
    assert trained == [steps, 70, 70]


def _fake_sft_inputs(artifacts, monkeypatch) -> list[str]:
    """A base model, tokenizer and dataset on disk, without training or building any."""
    base = artifacts / "ch06" / "base"
    LanguageModel(TINY).save_pretrained(base)
    tokenizer_file = artifacts / "tokenizer.json"
    tokenizer_file.write_text("{}")
    monkeypatch.setattr(trainer, "ensure_base_model", lambda: None)
    monkeypatch.setattr("chapters.ch02_tokenizer.tokenizer.tokenizer_path", lambda: tokenizer_file)
    calls = []

    def build_dataset(path, *args, **kwargs):
        calls.append("dataset")
        path.write_text(
            json.dumps(
                {"prompt": f"p{len(calls)}", "response": "r", "split": "train", "source": "x"}
            )
            + "\n"
        )
        return [], {}

    def train_model(*args, **kwargs):
        calls.append("model")
        return LanguageModel(TINY), None

    monkeypatch.setattr(sft, "build_sft_dataset", build_dataset)
    monkeypatch.setattr(sft, "train_sft_model", train_model)
    monkeypatch.setattr(
        "chapters.ch01_data.data_pipeline.ensure_clean_corpus", lambda: _corpus(artifacts)
    )
    return calls


def _corpus(artifacts):
    folder = artifacts / "ch01"
    folder.mkdir(exist_ok=True)
    if not (folder / "manifest.json").exists():
        (folder / "manifest.json").write_text('{"splits": {}}')
    return folder


def test_sft_model_is_retrained_when_sft_training_changes(artifacts, monkeypatch):
    calls = _fake_sft_inputs(artifacts, monkeypatch)
    sft.ensure_sft_model()
    sft.ensure_sft_model()
    assert calls == ["dataset", "model"]
    monkeypatch.setitem(sft.SFT_TRAINING, "steps", sft.SFT_TRAINING["steps"] + 1)
    sft.ensure_sft_model()
    assert calls == ["dataset", "model", "model"]
    assert (
        json.loads(course.recipe_path(artifacts / "ch08" / "sft").read_text())["training"]["steps"]
        == sft.SFT_TRAINING["steps"]
    )


def test_dataset_and_model_are_rebuilt_when_a_task_family_changes(artifacts, monkeypatch):
    calls = _fake_sft_inputs(artifacts, monkeypatch)
    sft.ensure_sft_model()
    name, family = next(iter(sft.TASK_FAMILIES.items()))
    changed = dataclasses.replace(family, templates=tuple(t + " Now." for t in family.templates))
    monkeypatch.setitem(sft.TASK_FAMILIES, name, changed)
    sft.ensure_sft_model()
    assert calls == ["dataset", "model", "dataset", "model"]


def test_chapter_9_models_are_retrained_when_their_settings_or_the_sft_model_change(
    artifacts, monkeypatch
):
    sft_folder = artifacts / "ch08" / "sft"
    LanguageModel(TINY).save_pretrained(sft_folder)
    monkeypatch.setattr(sft, "ensure_sft_model", lambda: None)
    alignment._save_model_folder("rl_checker", LanguageModel(TINY).save_pretrained)
    assert not alignment._needs_training("rl_checker", "Checker-RL model")
    changed = dataclasses.replace(alignment.CHECKER_GRPO, steps=alignment.CHECKER_GRPO.steps + 1)
    monkeypatch.setattr(alignment, "CHECKER_GRPO", changed)
    assert alignment._needs_training("rl_checker", "Checker-RL model")
    monkeypatch.undo()
    monkeypatch.setenv("LLM_COURSE_ARTIFACTS", str(artifacts))
    monkeypatch.setattr(sft, "ensure_sft_model", lambda: None)
    assert not alignment._needs_training("rl_checker", "Checker-RL model")
    LanguageModel(ModelConfig(**{**TINY.to_dict(), "d_model": 16})).save_pretrained(sft_folder)
    assert alignment._needs_training("rl_checker", "Checker-RL model")
