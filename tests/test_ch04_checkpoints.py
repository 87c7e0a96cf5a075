"""Chapter 4: save_pretrained / from_pretrained round trip and its error messages."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from chapters.ch04_blocks.model import LanguageModel, ModelConfig

TINY = ModelConfig(vocab_size=64, context_length=16, d_model=32, n_layers=2, n_heads=2)


@pytest.mark.parametrize("tie", [True, False])
def test_save_load_round_trip_gives_identical_logits(tmp_path, tie):
    model = LanguageModel(dataclasses.replace(TINY, tie_embeddings=tie)).eval()
    model.save_pretrained(tmp_path)
    loaded = LanguageModel.from_pretrained(tmp_path)
    tokens = torch.randint(0, TINY.vocab_size, (2, 10))
    with torch.no_grad():
        assert torch.equal(model(tokens), loaded(tokens))
    assert loaded.config == model.config
    assert (loaded.lm_head.weight is loaded.token_embedding.weight) == tie


def test_tied_weights_are_saved_once(tmp_path):
    LanguageModel(TINY).save_pretrained(tmp_path)
    names = load_file(tmp_path / "model.safetensors").keys()
    assert "token_embedding.weight" in names and "lm_head.weight" not in names


def test_checkpoint_folder_holds_only_the_two_files(tmp_path):
    LanguageModel(TINY).save_pretrained(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((tmp_path / "config.json").read_text()) == TINY.to_dict()


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LanguageModel.from_pretrained(tmp_path / "nothing_here")


def test_missing_weights_file_is_a_clear_error(tmp_path):
    LanguageModel(TINY).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        LanguageModel.from_pretrained(tmp_path)


def test_missing_config_is_a_clear_error(tmp_path):
    LanguageModel(TINY).save_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        LanguageModel.from_pretrained(tmp_path)


def test_corrupt_weights_file_is_a_clear_error(tmp_path):
    LanguageModel(TINY).save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupt"):
        LanguageModel.from_pretrained(tmp_path)


def test_config_that_disagrees_with_weights_is_a_clear_error(tmp_path):
    LanguageModel(TINY).save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**TINY.to_dict(), "d_model": 64}))
    with pytest.raises(ValueError, match="do not match"):
        LanguageModel.from_pretrained(tmp_path)


def test_weights_only_pt_file_is_loaded_as_a_fallback(tmp_path):
    model = LanguageModel(TINY).eval()
    model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "model.pt")
    loaded = LanguageModel.from_pretrained(tmp_path)
    tokens = torch.randint(0, TINY.vocab_size, (1, 8))
    with torch.no_grad():
        assert torch.equal(model(tokens), loaded(tokens))


def test_pt_file_with_pickled_code_is_refused(tmp_path):
    LanguageModel(TINY).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save({"not": dataclasses.replace}, tmp_path / "model.pt")  # a function: not weights
    with pytest.raises(ValueError, match="model.pt"):
        LanguageModel.from_pretrained(tmp_path)


def test_a_failed_save_leaves_the_old_checkpoint_and_no_temporary_files(tmp_path, monkeypatch):
    import chapters.ch04_blocks.model as model_module

    old = LanguageModel(TINY).eval()
    old.save_pretrained(tmp_path)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(model_module, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        LanguageModel(TINY).save_pretrained(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    tokens = torch.randint(0, TINY.vocab_size, (1, 8))
    with torch.no_grad():
        assert torch.equal(LanguageModel.from_pretrained(tmp_path)(tokens), old(tokens))


def test_a_config_edited_to_other_values_with_the_same_shapes_is_refused(tmp_path):
    LanguageModel(TINY).save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**TINY.to_dict(), "norm_eps": 0.5}))
    with pytest.raises(ValueError, match=r"\['norm_eps'\] differ"):
        LanguageModel.from_pretrained(tmp_path)


def test_new_weights_paired_with_an_old_config_are_refused(tmp_path):
    """A crash between the two renames of save_pretrained leaves exactly this pair."""
    LanguageModel(TINY).save_pretrained(tmp_path / "old")
    LanguageModel(dataclasses.replace(TINY, rope_theta=500.0)).save_pretrained(tmp_path / "new")
    (tmp_path / "new" / "config.json").write_bytes((tmp_path / "old" / "config.json").read_bytes())
    with pytest.raises(ValueError, match="different saves"):
        LanguageModel.from_pretrained(tmp_path / "new")


@pytest.mark.parametrize("poison", ["nan", "inf", "integer"])
def test_weights_that_are_not_finite_floats_are_refused(tmp_path, poison):
    model = LanguageModel(TINY)
    model.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    name = "final_norm.weight"
    if poison == "integer":
        tensors[name] = tensors[name].long()
    else:
        tensors[name][0] = float(poison)
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(
        ValueError, match="NaN or infinite" if poison != "integer" else "not a float"
    ):
        LanguageModel.from_pretrained(tmp_path)


def test_a_binary_config_file_is_a_clear_error(tmp_path):
    LanguageModel(TINY).save_pretrained(tmp_path)
    (tmp_path / "config.json").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ValueError, match="not valid JSON text"):
        LanguageModel.from_pretrained(tmp_path)
