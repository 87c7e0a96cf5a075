"""The full IsoFLOP sweep of chapter 6, resumable, with the fitted power law.

    python chapters/ch06_pretraining/scaling_sweep.py            # six budgets, about an hour
    python chapters/ch06_pretraining/scaling_sweep.py --tiny     # smoke test, well under a minute

Results go to a JSON file (default: artifacts/ch06/isoflop_full.json) that is rewritten after
every run; interrupt the script and start it again, and it continues with the runs that are
missing. At the end it fits the optimum of every budget and the power law N_opt = k C^a,
prints them next to the published exponents, and saves the fit and a figure.
"""

import argparse
import json
from pathlib import Path

from chapters.ch06_pretraining.scaling import (
    CHINCHILLA_PARAMS_EXPONENT,
    CHINCHILLA_TOKENS_EXPONENT,
    FULL_BUDGETS,
    KAPLAN_PARAMS_EXPONENT,
    bootstrap_params_exponent,
    fit_isoflop,
    plot_isoflop,
    run_isoflop_sweep,
)
from chapters.course import artifacts_dir, atomic_write, run_dir

TINY_BUDGETS = (2e9, 4e9)
TINY_SHAPES = ((8, 1, 1), (16, 1, 2), (24, 1, 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="two tiny budgets: a smoke test")
    parser.add_argument("--results", type=Path, default=None, help="results JSON (resumable)")
    arguments = parser.parse_args()

    name = "isoflop_tiny" if arguments.tiny else "isoflop_full"
    results_path = arguments.results or artifacts_dir("ch06") / f"{name}.json"
    if arguments.tiny:
        results = run_isoflop_sweep(
            TINY_BUDGETS,
            TINY_SHAPES,
            results_path,
            train_bpe_tokens=100_000,
            tokens_per_parameter_range=(0.5, 1000),
        )
    else:
        results = run_isoflop_sweep(FULL_BUDGETS, results_path=results_path)
    print(f"{len(results)} runs, results in {results_path}")
    for r in sorted(results, key=lambda r: (r["compute"], r["params"])):
        print(
            f"C={r['compute']:.1e}  N={r['params']:>8,}  D={r['tokens']:>10,}  "
            f"D/N={r['tokens'] / r['params']:7.1f}  val loss {r['val_loss']:.4f}"
        )
    fit = fit_isoflop(results)
    for compute, n, d, loss in zip(
        fit.budgets, fit.optimal_params, fit.optimal_tokens, fit.optimal_losses, strict=True
    ):
        print(
            f"optimum at C={compute:.1e}: N={n:,.0f}, D={d:,.0f} ({d / n:.1f} tokens/param), loss {loss:.3f}"
        )
    low, high = bootstrap_params_exponent(results)
    print(
        f"fitted law: N_opt = {fit.params_coefficient:.3g} * C^{fit.params_exponent:.3f} "
        f"(95% bootstrap interval {low:.2f} to {high:.2f}), D_opt ∝ C^{fit.tokens_exponent:.3f}"
    )
    pairs = zip(fit.budgets, fit.vertex_inside, strict=True)
    outside = [f"{compute:.1e}" for compute, inside in pairs if not inside]
    if outside:
        print(f"budgets whose optimum is at the edge of their sizes (add sizes there): {outside}")
    print(
        f"published: Chinchilla a = {CHINCHILLA_PARAMS_EXPONENT}, b = {CHINCHILLA_TOKENS_EXPONENT}; "
        f"Kaplan a = {KAPLAN_PARAMS_EXPONENT}"
    )
    with atomic_write(results_path.with_name(f"{name}_fit.json")) as file:
        json.dump(fit.to_dict(), file, indent=1)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot_isoflop(results, fit)
    figure_path = run_dir("ch06") / f"{name}.png"
    plt.gcf().savefig(figure_path)
    print(f"figure saved to {figure_path}")


if __name__ == "__main__":
    main()
