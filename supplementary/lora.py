# Generated from supplementary/lora.ipynb by `python setup/export_modules.py`. Do not edit:
# change the notebook's cells tagged for export and run that command again.


"""LoRA from scratch: low-rank adapters on the attention and MLP projections of the course model.

Hu et al. 2021 ("LoRA: Low-Rank Adaptation of Large Language Models"): freeze a pre-trained
weight W (out, in) and learn a low-rank update, so the layer computes
    y = W x + (alpha / r) * B A x,   A: (r, in), B: (out, r), r << min(in, out).
B starts at zero, so training starts exactly at the pre-trained model; after training, B A can
be added into W ("merged") and the adapter costs nothing at inference.

    add_lora(model, rank, alpha, targets) -> model     # in place: freezes, wraps projections
    merge_lora(model), unmerge_lora(model)              # fold B A into W and back
    merged_model(model) -> LanguageModel                # a plain model, e.g. for hf_export
    trainable_parameters(model) -> int
    training_memory_bytes(model) -> dict                # weights, gradients, AdamW state
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from chapters.ch04_blocks.model import LanguageModel

# The projections of chapter 3's attention and chapter 4's SwiGLU, by their module names.
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")
MLP_PROJECTIONS = ("w1", "w2", "w3")
DEFAULT_TARGETS = ATTENTION_PROJECTIONS + MLP_PROJECTIONS


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` plus a trainable low-rank update: base(x) + scale * x A^T B^T.

    A is initialised like a Linear layer (Kaiming-uniform), B with zeros (Hu et al. 2021,
    section 4.1), so the wrapped layer starts as the exact base layer. `scale = alpha / rank`
    keeps the update's size comparable when the rank changes, so one learning rate works for
    several ranks.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}.")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
            raise ValueError(f"rank must be a positive integer, got {rank!r}.")
        if rank > min(base.in_features, base.out_features):
            raise ValueError(
                f"rank={rank} exceeds min(in, out) = {min(base.in_features, base.out_features)} "
                "of the layer: the update would not be low-rank. Choose a smaller rank."
            )
        self.base = base
        self.base.requires_grad_(False)
        self.rank = rank
        self.alpha = float(rank if alpha is None else alpha)
        self.scale = self.alpha / rank
        weight = base.weight
        like = {"dtype": weight.dtype, "device": weight.device}
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, **like))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **like))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # what nn.Linear does
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        """The update scale * B A, shaped like the base weight (out, in)."""
        return self.scale * (self.lora_B @ self.lora_A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)  # (..., in) -> (..., out)
        if self.merged:
            return y  # B A already lives inside base.weight
        # Two thin matmuls, (..., in) -> (..., r) -> (..., out): never the full (out, in) matrix.
        return y + self.scale * F.linear(F.linear(x, self.lora_A), self.lora_B)

    @torch.no_grad()
    def merge(self) -> None:
        """Add B A into the base weight: same outputs, no extra cost per token."""
        if not self.merged:
            self.base.weight += self.delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take B A back out of the base weight (to continue training the adapter)."""
        if self.merged:
            self.base.weight -= self.delta_weight()
            self.merged = False

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, merged={self.merged}"


def add_lora(
    model: nn.Module,
    rank: int = 8,
    alpha: float | None = None,
    targets: tuple[str, ...] = DEFAULT_TARGETS,
) -> nn.Module:
    """Freeze every parameter of `model` and wrap each Linear named in `targets` with LoRA.

    Works in place and returns the model. `targets` are module names as they appear at the end
    of a path (`q_proj` matches `blocks.0.attention.q_proj`). Afterwards only the adapters'
    A and B require gradients.
    """
    if any(isinstance(module, LoRALinear) for module in model.modules()):
        raise ValueError(
            "the model already has LoRA adapters; call add_lora once (or start from a copy)."
        )
    model.requires_grad_(False)
    wrapped = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in targets and isinstance(child, nn.Linear):
                setattr(module, child_name, LoRALinear(child, rank, alpha))
                wrapped.append(f"{name}.{child_name}" if name else child_name)
    if not wrapped:
        raise ValueError(
            f"no nn.Linear named any of {targets} in the model, so no adapter was added; the "
            f"course model's projections are {DEFAULT_TARGETS}."
        )
    return model


def lora_layers(model: nn.Module) -> list[LoRALinear]:
    """Every LoRA-wrapped layer of `model`."""
    return [module for module in model.modules() if isinstance(module, LoRALinear)]


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (in place)."""
    for layer in lora_layers(model):
        layer.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Take every adapter back out of its base weight (in place)."""
    for layer in lora_layers(model):
        layer.unmerge()
    return model


@torch.no_grad()
def merged_model(model: LanguageModel) -> LanguageModel:
    """A plain `LanguageModel` whose weights include the adapters' updates.

    The result has no LoRA modules, so `LanguageModel.save_pretrained` and the Hugging Face
    export (supplementary/hf_export) take it as any other course model. `model` is unchanged.
    """
    plain = LanguageModel(model.config)
    state = {}
    for name, tensor in model.state_dict().items():
        if ".lora_" in name:
            continue
        state[name.replace(".base.", ".")] = tensor
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear) and not module.merged:
            state[f"{name}.weight"] = state[f"{name}.weight"] + module.delta_weight()
    plain.load_state_dict(state)
    return plain.to(next(model.parameters()).device).eval()


def trainable_parameters(model: nn.Module) -> int:
    """How many parameters receive gradients (a tied matrix counted once)."""
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)


def training_memory_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes of weights, gradients and AdamW state (two moments) when training `model`.

    Activations are left out: they depend on the batch, not on the method, and LoRA keeps
    them (nearly) the same as full fine-tuning.
    """
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return {
        "weights": weights,
        "gradients": trainable,
        "optimizer": 2 * trainable,  # AdamW keeps exp_avg and exp_avg_sq per trained weight
        "total": weights + 3 * trainable,
    }
