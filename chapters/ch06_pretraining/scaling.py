"""Compute-optimal scaling on a CPU: an IsoFLOP sweep of tiny byte-level models.

For each compute budget C, models of several sizes N are trained on D = C / (6N) tokens, so
that every run of one budget costs the same FLOPs. The size with the lowest validation loss
is that budget's optimum; a power law through the optima, N_opt ∝ C^a, is what Hoffmann et
al. (2022, "Chinchilla") measured at a = 0.49 to 0.50: parameters and tokens should grow in
equal proportion. The models here read bytes (vocabulary 256) so that even a few thousand
parameters make a sensible model and the whole reduced sweep fits in about two minutes.
"""

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from chapters.ch02_tokenizer.tokenizer import ensure_tokenizer, load_tokens, token_bytes
from chapters.ch04_blocks.model import LanguageModel, ModelConfig, count_parameters, default_d_ff
from chapters.ch06_pretraining import trainer
from chapters.course import artifacts_dir, atomic_write

# Published results to compare with (Hoffmann et al. 2022, Table 2 and section 3).
CHINCHILLA_PARAMS_EXPONENT = 0.49  # N_opt ∝ C^a, approach 2 (IsoFLOP profiles)
CHINCHILLA_TOKENS_EXPONENT = 0.51  # D_opt ∝ C^b, approach 2
CHINCHILLA_TOKENS_PER_PARAMETER = 20  # D_opt / N_opt at their scales
KAPLAN_PARAMS_EXPONENT = 0.73  # Kaplan et al. (2020), who scaled N much faster than D

BYTE_VOCAB = 256
SWEEP_CONTEXT = 64
SWEEP_BATCH = 16
SWEEP_LR = 1e-2
SWEEP_D_FF_MULTIPLE = 64  # the sweep's feed-forward widths, fixed when its results were measured
# (d_model, n_layers, n_heads): from 2.9k to 0.9M parameters, 1.4 to 2x apart at the small end
# (where the reduced budgets' optima lie), about 2x apart above.
SWEEP_SHAPES = (
    (6, 1, 1),
    (8, 1, 1),
    (12, 1, 2),
    (16, 1, 2),
    (24, 1, 2),
    (32, 1, 2),
    (32, 2, 2),
    (48, 2, 4),
    (64, 2, 4),
    (64, 4, 4),
    (96, 4, 4),
    (128, 4, 4),
)
REDUCED_BUDGETS = (1e10, 3e10, 9e10)  # about two minutes on 2 CPU cores
FULL_BUDGETS = (1e10, 3e10, 9e10, 2.7e11, 8.1e11, 2.4e12)  # scaling_sweep.py; about an hour


def byte_level_tokens(split: str, max_tokens: int | None = None) -> np.ndarray:
    """Chapter 2's token shard of `split`, spelled out as bytes (ids 0-255; EOT becomes 0).

    The same text as the rest of the course, seen one byte at a time.
    """
    tokenizer = ensure_tokenizer()
    table = [b""] * tokenizer.get_vocab_size()
    for token_id, data in token_bytes(tokenizer).items():
        table[token_id] = data
    for token_id in tokenizer.get_added_tokens_decoder():
        table[token_id] = b"\x00"  # special tokens (EOT between documents) become one byte
    ids = np.asarray(load_tokens(split)[:max_tokens])
    data = b"".join(table[i] for i in ids.tolist())
    return np.frombuffer(data, dtype=np.uint8).astype(np.uint16)


def sweep_model_config(d_model: int, n_layers: int, n_heads: int) -> ModelConfig:
    """A byte-level model of the sweep's family (SwiGLU width 8/3 d rounded up to a multiple of
    64, whatever chapter 4's default rounding: the family stays the one the results describe)."""
    return ModelConfig(
        vocab_size=BYTE_VOCAB,
        context_length=SWEEP_CONTEXT,
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        d_ff=default_d_ff(d_model, multiple_of=SWEEP_D_FF_MULTIPLE),
    )


def isoflop_run(
    model_config: ModelConfig,
    compute: float,
    train_tokens: np.ndarray,
    validation_tokens: np.ndarray,
    *,
    learning_rate: float = SWEEP_LR,
    eval_batches: int = 16,
    seed: int = 0,
) -> dict:
    """Train one model on D = compute / (6N) tokens; return its size, tokens and val loss."""
    params = count_parameters(model_config)
    tokens_per_step = SWEEP_BATCH * SWEEP_CONTEXT
    steps = max(10, round(compute / (6 * params) / tokens_per_step))
    config = trainer.TrainingConfig(
        steps=steps,
        batch_size=SWEEP_BATCH,
        context_length=SWEEP_CONTEXT,
        learning_rate=learning_rate,
        min_lr=learning_rate / 10,
        warmup_steps=max(1, steps // 10),
        eval_interval=0,
        log_interval=steps,
        seed=seed,
    )
    torch.manual_seed(seed)
    run = trainer.Trainer(
        LanguageModel(model_config),
        config,
        trainer.random_window_batches(train_tokens, SWEEP_BATCH, SWEEP_CONTEXT, seed),
        device="cpu",
        show_progress=False,
    )
    history = run.fit()
    val_loss = trainer.evaluate(
        run.model,
        trainer.sequential_eval_batches(
            validation_tokens, SWEEP_BATCH, SWEEP_CONTEXT, eval_batches
        ),
    )
    return {
        "compute": compute,
        "d_model": model_config.d_model,
        "n_layers": model_config.n_layers,
        "params": params,
        "tokens": steps * tokens_per_step,
        "steps": steps,
        "val_loss": val_loss if not history.diverged else float("nan"),
    }


def run_isoflop_sweep(
    budgets: Iterable[float],
    shapes: Iterable[tuple[int, int, int]] = SWEEP_SHAPES,
    results_path: str | Path | None = None,
    *,
    train_bpe_tokens: int = 1_000_000,
    tokens_per_parameter_range: tuple[float, float] = (5, 450),
    show_progress: bool = True,
) -> list[dict]:
    """Every (budget, shape) run, resumable: finished runs are read back from `results_path`
    (a JSON list, rewritten atomically after each run) and not trained again.

    A shape is skipped for a budget when its tokens per parameter fall outside
    `tokens_per_parameter_range`: far from any optimum, such runs only cost time.
    """
    budgets, shapes = list(budgets), list(shapes)
    results: list[dict] = []
    if results_path is not None and Path(results_path).is_file():
        results = json.loads(Path(results_path).read_text())
    done = {(r["compute"], r["d_model"], r["n_layers"]) for r in results}
    plan = []
    for compute in budgets:
        for shape in shapes:
            params = count_parameters(sweep_model_config(*shape))
            tokens_per_parameter = compute / (6 * params) / params
            low, high = tokens_per_parameter_range
            if low <= tokens_per_parameter <= high and (compute, *shape[:2]) not in done:
                plan.append((compute, shape))
    if plan:
        train_tokens = byte_level_tokens("train", train_bpe_tokens)  # about 3.5M bytes
        validation_tokens = byte_level_tokens("validation", 20_000)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # models this small are faster on one thread than on two
    try:
        for compute, shape in tqdm(plan, desc="IsoFLOP runs", disable=not show_progress):
            results.append(
                isoflop_run(sweep_model_config(*shape), compute, train_tokens, validation_tokens)
            )
            if results_path is not None:
                with atomic_write(results_path) as file:
                    json.dump(results, file, indent=1)
    finally:
        torch.set_num_threads(threads)
    return [r for r in results if r["compute"] in budgets]


@dataclass
class IsoFLOPFit:
    """Per-budget optima (from a parabola in log N) and the power laws through them."""

    budgets: list[float]
    optimal_params: list[float]
    optimal_tokens: list[float]
    optimal_losses: list[float]
    parabolas: list[list[float]]  # per budget: loss = a x^2 + b x + c with x = log10(N)
    params_exponent: float  # a in N_opt = k C^a
    params_coefficient: float  # k
    tokens_exponent: float  # b in D_opt ∝ C^b (= 1 - a, because D = C / 6N)
    # per budget: the parabola opens upward and its vertex lies between the sizes tried
    vertex_inside: list[bool] = field(default_factory=list)

    def optimal_params_for(self, compute: float) -> float:
        """N_opt predicted by the fitted power law for a budget of `compute` FLOPs."""
        return self.params_coefficient * compute**self.params_exponent

    def to_dict(self) -> dict:
        return asdict(self)


def fit_isoflop(results: list[dict]) -> IsoFLOPFit:
    """Fit a parabola in log10(N) to each budget's losses, take its minimum as that budget's
    optimum, then fit log N_opt = a log C + log k by least squares."""
    budgets = sorted({r["compute"] for r in results})
    optima, parabolas, inside = [], [], []
    for compute in budgets:
        runs = [r for r in results if r["compute"] == compute and math.isfinite(r["val_loss"])]
        if len(runs) < 3:
            raise ValueError(
                f"Budget {compute:.2g} has {len(runs)} finished runs; a parabola needs at "
                "least 3. Add shapes around its optimum or run the sweep further."
            )
        x = np.log10([r["params"] for r in runs])
        y = np.array([r["val_loss"] for r in runs])
        a, b, c = np.polyfit(x, y, 2)
        if a <= 0:  # no minimum inside: fall back on the best measured run
            best = int(np.argmin(y))
            x_opt = float(x[best])
            inside.append(False)
        else:
            vertex = -b / (2 * a)
            x_opt = float(np.clip(vertex, x.min(), x.max()))
            inside.append(bool(x.min() < vertex < x.max()))
        optima.append((10**x_opt, float(np.polyval([a, b, c], x_opt))))
        parabolas.append([float(a), float(b), float(c)])
    log_c = np.log10(budgets)
    log_n = np.log10([n for n, _ in optima])
    exponent, intercept = np.polyfit(log_c, log_n, 1)
    return IsoFLOPFit(
        budgets=budgets,
        optimal_params=[n for n, _ in optima],
        optimal_tokens=[c / (6 * n) for c, (n, _) in zip(budgets, optima, strict=True)],
        optimal_losses=[loss for _, loss in optima],
        parabolas=parabolas,
        vertex_inside=inside,
        params_exponent=float(exponent),
        params_coefficient=float(10**intercept),
        tokens_exponent=float(1 - exponent),
    )


def bootstrap_params_exponent(
    results: list[dict], samples: int = 500, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """A bootstrap interval for the fitted exponent a of N_opt = k C^a: redraw each budget's
    runs with replacement (keeping draws with at least 3 distinct sizes), refit, and take the
    central `level` of the exponents."""
    rng = np.random.default_rng(seed)
    by_budget: dict[float, list[dict]] = {}
    for r in results:
        if math.isfinite(r["val_loss"]):
            by_budget.setdefault(r["compute"], []).append(r)
    for compute, runs in by_budget.items():
        if len({r["params"] for r in runs}) < 3:  # no draw could ever be fitted
            raise ValueError(
                f"Budget {compute:.2g} has runs at fewer than 3 model sizes; the bootstrap "
                "refits a parabola per budget and needs at least 3. Add sizes there."
            )
    exponents = []
    while len(exponents) < samples:
        drawn = []
        for runs in by_budget.values():
            picks = rng.integers(0, len(runs), len(runs))
            if len({runs[i]["params"] for i in picks}) < 3:
                break  # a parabola needs three sizes: draw again
            drawn += [runs[i] for i in picks]
        else:
            exponents.append(fit_isoflop(drawn).params_exponent)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(exponents, [tail, 100 - tail])
    return float(low), float(high)


def plot_isoflop(results: list[dict], fit: IsoFLOPFit) -> None:
    """Left: loss against model size per budget (the IsoFLOP valleys). Right: the optimal
    size against compute, our fit next to the published exponents."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    colors = plt.cm.viridis(np.linspace(0.1, 0.85, len(fit.budgets)))
    for compute, parabola, color in zip(fit.budgets, fit.parabolas, colors, strict=True):
        runs = sorted((r for r in results if r["compute"] == compute), key=lambda r: r["params"])
        x = np.array([r["params"] for r in runs])
        left.scatter(x, [r["val_loss"] for r in runs], color=color, label=f"C = {compute:.1e}")
        grid = np.linspace(np.log10(x.min()), np.log10(x.max()), 50)
        left.plot(10**grid, np.polyval(parabola, grid), color=color, alpha=0.6)
    left.scatter(fit.optimal_params, fit.optimal_losses, marker="*", s=150, color="crimson")
    left.set(
        xscale="log",
        xlabel="parameters N",
        ylabel="validation loss (nats per byte)",
        title="IsoFLOP profiles: same compute, different sizes",
    )
    left.xaxis.set_minor_formatter(NullFormatter())  # minor labels would overlap at this range
    left.legend()
    c = np.geomspace(min(fit.budgets) / 2, max(fit.budgets) * 2, 20)
    right.scatter(fit.budgets, fit.optimal_params, color="crimson", zorder=3, label="our optima")
    right.plot(
        c,
        fit.optimal_params_for(c),
        color="crimson",
        label=f"our fit a = {fit.params_exponent:.2f}",
    )
    anchor_c, anchor_n = math.sqrt(c[0] * c[-1]), fit.optimal_params_for(math.sqrt(c[0] * c[-1]))
    for exponent, label, style in (
        (CHINCHILLA_PARAMS_EXPONENT, "Chinchilla a = 0.49", "--"),
        (KAPLAN_PARAMS_EXPONENT, "Kaplan a = 0.73", ":"),
    ):
        right.plot(c, anchor_n * (c / anchor_c) ** exponent, "k" + style, label=label, alpha=0.7)
    right.plot(
        c,
        np.sqrt(c / (6 * CHINCHILLA_TOKENS_PER_PARAMETER)),
        color="gray",
        alpha=0.6,
        label="20 tokens per parameter",
    )
    right.set(
        xscale="log",
        yscale="log",
        xlabel="compute C (FLOPs)",
        ylabel="compute-optimal parameters N",
        title="Optimal model size against compute",
    )
    right.legend()
    figure.tight_layout()
    plt.show()


def ensure_isoflop_results(full: bool = False) -> list[dict]:
    """The sweep's results, read from artifacts_dir("ch06") or computed (and saved) first."""
    name = "isoflop_full.json" if full else "isoflop_reduced.json"
    budgets = FULL_BUDGETS if full else REDUCED_BUDGETS
    return run_isoflop_sweep(budgets, results_path=artifacts_dir("ch06") / name)
