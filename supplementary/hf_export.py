# Generated from supplementary/hf_export.ipynb by `python setup/export_modules.py`. Do not edit:
# change the notebook's cells tagged for export and run that command again.


"""From the course model to Hugging Face: export a `LanguageModel` and the course tokenizer to a
folder that `transformers` loads as `LlamaForCausalLM` and `PreTrainedTokenizerFast`.

Read top to bottom: what the export refuses (and why), the RoPE permutation, the name map from
the course's parameters to Llama's, the config and tokenizer files, the export itself (written
atomically), and the loaders plus the comparison that proves the export right.

    export_to_hf(model, tokenizer, folder) -> Path
    load_hf_model(folder), load_hf_tokenizer(folder)   # transformers, offline, from the folder
    load_exported(folder) -> LanguageModel             # the way back, for round trips
    max_logit_difference(model, hf_model, token_ids) -> float

The export itself needs only torch and safetensors; `transformers` is imported by the loaders.
"""

import json
from pathlib import Path

import tokenizers
import torch
from safetensors.torch import load_file, save_file

from chapters.ch02_tokenizer.tokenizer import EOT_ID, PAD_ID, SPECIAL_TOKENS, check_special_ids
from chapters.ch04_blocks.model import LanguageModel, ModelConfig, RMSNorm
from chapters.course import atomic_folder, atomic_write

HF_WEIGHTS_NAME = "model.safetensors"
HF_CONFIG_NAME = "config.json"
TOKENIZER_NAME = "tokenizer.json"


class UnsupportedForExport(ValueError):
    """The model uses an option that Llama's architecture in `transformers` cannot express."""


def check_exportable(model: LanguageModel) -> None:
    """Raise `UnsupportedForExport`, naming the option, if `model` is not a Llama in disguise.

    Llama = RMSNorm everywhere, no biases, SwiGLU with SiLU, rotary positions, every head with
    its own keys and values. The course model is exactly that by default; chapter 5's norm swap
    (LayerNorm, or any other `make_norm`) is not, and a silent export would load without error
    in `transformers` and compute a different function.
    """
    if not isinstance(model, LanguageModel):
        raise TypeError(
            f"export_to_hf exports the course's LanguageModel, got {type(model).__name__}."
        )
    config = model.config
    if config.norm != "rmsnorm":
        raise UnsupportedForExport(
            f"ModelConfig.norm={config.norm!r} is not supported: LlamaForCausalLM only has "
            "RMSNorm. Export a model trained with norm='rmsnorm'."
        )
    for name, module in model.named_modules():
        if name.endswith("norm") and not isinstance(module, RMSNorm):
            raise UnsupportedForExport(
                f"the norm {name!r} is a {type(module).__name__}, not the course's RMSNorm "
                "(was the model built with a custom make_norm?). LlamaForCausalLM only has "
                "RMSNorm, so this model cannot be exported."
            )
        if isinstance(module, RMSNorm) and module.eps != config.norm_eps:
            raise UnsupportedForExport(
                f"the norm {name!r} has eps={module.eps} but ModelConfig.norm_eps="
                f"{config.norm_eps}; Llama has a single rms_norm_eps for every norm."
            )
    biases = [name for name, _ in model.named_parameters() if name.endswith("bias")]
    if biases:
        raise UnsupportedForExport(
            f"the model has bias parameters ({biases[:3]}...), which this export does not map; "
            "the course's Llama-style model has none."
        )
    tied = model.lm_head.weight is model.token_embedding.weight
    if tied != config.tie_embeddings:
        raise UnsupportedForExport(
            f"ModelConfig.tie_embeddings={config.tie_embeddings} but the LM head is "
            f"{'tied to' if tied else 'separate from'} the embedding in the model itself: "
            "config and weights disagree, so tie_word_embeddings would be wrong."
        )


def half_split_order(head_dim: int) -> torch.Tensor:
    """The feature order that turns interleaved RoPE pairs into Hugging Face's half-split pairs.

    The course rotates the pairs (0, 1), (2, 3), ... of each head (RoFormer's form, chapter 3);
    Llama in `transformers` rotates (i, i + head_dim/2) by the same angle as the course's
    pair i. Listing the even features first and then the odd ones puts course pair i at
    positions i and i + head_dim/2: e.g. head_dim 8 -> [0, 2, 4, 6, 1, 3, 5, 7].
    """
    if head_dim <= 0 or head_dim % 2:
        raise ValueError(f"head_dim must be a positive even number, got {head_dim}.")
    return torch.cat((torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)))


def interleaved_to_half_split(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder the output rows of a q or k projection (n_heads * head_dim, d_model), per head.

    The same permutation on queries and keys leaves every dot product q.k unchanged, so the
    attention scores (and the model) stay the same; only the pairing RoPE sees changes.
    """
    rows, columns = weight.shape
    if rows % n_heads:
        raise ValueError(f"{rows} output rows cannot be split into {n_heads} heads.")
    order = half_split_order(rows // n_heads)
    # (n_heads * hd, C) -> (n_heads, hd, C), reorder hd, back
    return weight.reshape(n_heads, -1, columns)[:, order].reshape(rows, columns)


def half_split_to_interleaved(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of `interleaved_to_half_split` (Hugging Face's q/k rows back to the course's)."""
    rows, columns = weight.shape
    if rows % n_heads:
        raise ValueError(f"{rows} output rows cannot be split into {n_heads} heads.")
    inverse = torch.argsort(half_split_order(rows // n_heads))
    return weight.reshape(n_heads, -1, columns)[:, inverse].reshape(rows, columns)


# Course parameter name -> Llama parameter name; "{i}" is the block index.
LLAMA_NAMES = {
    "token_embedding.weight": "model.embed_tokens.weight",
    "blocks.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blocks.{i}.attention.q_proj.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blocks.{i}.attention.k_proj.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blocks.{i}.attention.v_proj.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blocks.{i}.attention.out_proj.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blocks.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blocks.{i}.ffn.w1.weight": "model.layers.{i}.mlp.gate_proj.weight",  # inside the SiLU
    "blocks.{i}.ffn.w3.weight": "model.layers.{i}.mlp.up_proj.weight",  # the value it gates
    "blocks.{i}.ffn.w2.weight": "model.layers.{i}.mlp.down_proj.weight",
    "final_norm.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}
ROTATED = ("attention.q_proj.weight", "attention.k_proj.weight")


def llama_name(course_name: str) -> str:
    """The Llama name of one course parameter, e.g. blocks.0.ffn.w1.weight -> ...gate_proj."""
    parts = course_name.split(".")
    if parts[0] == "blocks" and len(parts) > 2 and parts[1].isdigit():
        template = ".".join(["blocks", "{i}", *parts[2:]])
        if template in LLAMA_NAMES:
            return LLAMA_NAMES[template].format(i=parts[1])
    elif course_name in LLAMA_NAMES:
        return LLAMA_NAMES[course_name]
    raise UnsupportedForExport(
        f"the parameter {course_name!r} has no counterpart in LlamaForCausalLM; "
        "this export knows the course's LanguageModel only."
    )


def llama_state_dict(
    model: LanguageModel, *, permute_rope: bool = True, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """The model's weights under Llama's names, q/k rows permuted for half-split RoPE.

    `permute_rope=False` exists only to show what goes wrong without the permutation. A tied
    LM head is left out: `transformers` ties it to the embedding itself.
    """
    check_exportable(model)
    n_heads = model.config.n_heads
    tensors = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and model.config.tie_embeddings:
            continue
        tensor = tensor.detach().to("cpu", dtype)
        if permute_rope and name.endswith(ROTATED):
            tensor = interleaved_to_half_split(tensor, n_heads)
        tensors[llama_name(name)] = tensor.contiguous()
    return tensors


def llama_config(config: ModelConfig, dtype: torch.dtype = torch.float32) -> dict:
    """The `config.json` of the exported model: the course's sizes under Llama's field names.

    The RoPE base is written twice: `rope_theta` is what transformers 4.x reads and
    `rope_parameters` what 5.x reads (5.x also converts the old field on its own).
    """
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.d_ff,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_heads,  # one key/value head per query head (no GQA)
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.context_length,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "tie_word_embeddings": config.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        # Dropout only acts in training; an exported model is for inference or fine-tuning.
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "bos_token_id": EOT_ID,  # documents are separated by <|endoftext|>; there is no BOS
        "eos_token_id": EOT_ID,
        "pad_token_id": PAD_ID,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "use_cache": True,
    }


def tokenizer_files(tokenizer: tokenizers.Tokenizer, context_length: int) -> dict[str, str]:
    """The text of the three tokenizer files `PreTrainedTokenizerFast` reads from a folder."""
    check_special_ids(tokenizer)
    eot, pad, user, assistant = SPECIAL_TOKENS
    special = {
        "bos_token": eot,
        "eos_token": eot,
        "pad_token": pad,
        "additional_special_tokens": [user, assistant],
    }
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "model_max_length": context_length,
        "clean_up_tokenization_spaces": False,  # decode(encode(s)) == s, as in chapter 2
        "add_bos_token": False,
        "add_eos_token": False,
    }
    return {
        TOKENIZER_NAME: tokenizer.to_str(),
        "tokenizer_config.json": json.dumps(tokenizer_config, indent=2),
        "special_tokens_map.json": json.dumps(special, indent=2),
    }


def export_to_hf(
    model: LanguageModel,
    tokenizer: tokenizers.Tokenizer,
    folder: str | Path,
    *,
    permute_rope: bool = True,
    dtype: torch.dtype = torch.float32,
    overwrite: bool = False,
) -> Path:
    """Write a folder that `LlamaForCausalLM.from_pretrained(folder)` and
    `PreTrainedTokenizerFast.from_pretrained(folder)` load: config.json, generation_config.json,
    model.safetensors and the tokenizer files.

    The folder is built under a temporary name next to `folder` and renamed into place, so a
    crash never leaves half an export; an existing export at `folder` is replaced, any other
    folder only with `overwrite=True` (a model folder of the course's is not an export).
    """
    check_exportable(model)
    if tokenizer.get_vocab_size() > model.config.vocab_size:
        raise ValueError(
            f"the tokenizer has {tokenizer.get_vocab_size()} tokens but the model's embedding "
            f"only {model.config.vocab_size}: they do not belong together."
        )
    folder = Path(folder)
    with atomic_folder(
        folder, writer=EXPORT_WRITER, legacy_files=EXPORT_FILES, overwrite=overwrite
    ) as building:
        save_file(
            llama_state_dict(model, permute_rope=permute_rope, dtype=dtype),
            building / HF_WEIGHTS_NAME,
            metadata={"format": "pt", "written_by": "supplementary.hf_export"},
        )
        files = {
            HF_CONFIG_NAME: json.dumps(llama_config(model.config, dtype), indent=2),
            "generation_config.json": json.dumps(
                {"bos_token_id": EOT_ID, "eos_token_id": EOT_ID, "pad_token_id": PAD_ID},
                indent=2,
            ),
            **tokenizer_files(tokenizer, model.config.context_length),
        }
        for name, text in files.items():
            with atomic_write(building / name) as file:
                file.write(text)
    return folder


EXPORT_WRITER = "supplementary.hf_export"
# what an export holds: an export written before folders carried a marker is recognised by it
EXPORT_FILES = frozenset(
    {
        HF_WEIGHTS_NAME,
        HF_CONFIG_NAME,
        "generation_config.json",
        TOKENIZER_NAME,
        "tokenizer_config.json",
        "special_tokens_map.json",
    }
)


def load_exported(folder: str | Path) -> LanguageModel:
    """The course model back from an exported folder (the inverse of `export_to_hf`), eval mode."""
    folder = Path(folder)
    values = json.loads((folder / HF_CONFIG_NAME).read_text(encoding="utf-8"))
    config = ModelConfig(
        vocab_size=values["vocab_size"],
        context_length=values["max_position_embeddings"],
        d_model=values["hidden_size"],
        n_layers=values["num_hidden_layers"],
        n_heads=values["num_attention_heads"],
        d_ff=values["intermediate_size"],
        norm_eps=values["rms_norm_eps"],
        rope_theta=values["rope_theta"],
        tie_embeddings=values["tie_word_embeddings"],
    )
    model = LanguageModel(config)
    course_names = {llama_name(name): name for name in model.state_dict()}
    tensors = {}
    for name, tensor in load_file(folder / HF_WEIGHTS_NAME).items():
        course = course_names[name]
        if course.endswith(ROTATED):
            tensor = half_split_to_interleaved(tensor, config.n_heads)
        tensors[course] = tensor.float()
    model.load_state_dict(tensors, strict=not config.tie_embeddings)
    return model.eval()


def load_hf_model(folder: str | Path):
    """`LlamaForCausalLM` from the exported folder: offline, float32, eval mode."""
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(
        str(folder), local_files_only=True, dtype=torch.float32
    ).eval()


def load_hf_tokenizer(folder: str | Path):
    """`PreTrainedTokenizerFast` from the exported folder, offline."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(folder), local_files_only=True)


@torch.no_grad()
def max_logit_difference(model: LanguageModel, hf_model, token_ids: torch.Tensor) -> float:
    """Largest |course logit - transformers logit| over every position of `token_ids` (B, T)."""
    model.eval()
    ours = model(token_ids)  # (B, T, vocab)
    theirs = hf_model(input_ids=token_ids).logits.float()  # (B, T, vocab)
    return float((ours - theirs).abs().max())
