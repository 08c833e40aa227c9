"""The published numbers (Jia et al., "Proof-of-Learning: Definitions and Practice", IEEE S&P 2021),
as (mean, std) per column, for the report to put beside ours. Columns: "cifar10" (ResNet-20) and
"cifar100" (ResNet-50); E = 200, S = 390, batch 128, on GPUs."""

from __future__ import annotations

# Table I: normalized reproduction error ‖ε_repr‖ = max_t ε_repr(t) / d_ref
TABLE1 = {
    "cifar10": {
        "k=E·S": {"l1": (0.974, 0.004), "l2": (0.955, 0.004), "linf": (0.769, 0.052),
                  "cos": (0.914, 0.007)},
        "k=1": {"l1": (0.001, 0.001), "l2": (0.001, 0.001), "linf": (0.001, 0.001),
                "cos": (0.0, 0.0)},
        "deterministic k=E·S": {"l1": (0.582, 0.004), "l2": (0.569, 0.004),
                                "linf": (0.307, 0.035), "cos": (0.46, 0.007)},
    },
    "cifar100": {
        "k=E·S": {"l1": (0.903, 0.002), "l2": (0.815, 0.002), "linf": (0.532, 0.07),
                  "cos": (0.383, 0.002)},
        "k=1": {"l1": (0.002, 0.001), "l2": (0.002, 0.002), "linf": (0.004, 0.004),
                "cos": (0.0, 0.0)},
        "deterministic k=E·S": {"l1": (0.903, 0.001), "l2": (0.816, 0.001),
                                "linf": (0.51, 0.055), "cos": (0.384, 0.002)},
    },
}

# Table V: d_ref, two models trained independently
TABLE5 = {
    "cifar10": {"l1": (27204.55, 57.384), "l2": (71.431, 0.243), "linf": (2.678, 0.267),
                "cos": (0.83, 0.005)},
    "cifar100": {"l1": (189093.15, 558.821), "l2": (58.17, 0.142), "linf": (0.898, 0.135),
                 "cos": (0.847, 0.003)},
}

# Table II: the step at which the KS p-value (min over layers) drops below α = 0.01, and the
# validation accuracy there (percent)
TABLE2 = {
    "cifar10": {"step": (7.00, 3.87), "accuracy": (10.526, 0.953)},
    "cifar100": {"step": (1.0, 0.0), "accuracy": (1.124, 0.348)},
}

# Table III: ‖ε_repr‖ of a PoL made by the inverse-gradient method (50 steps, k = 1)
TABLE3 = {
    "cifar10": {"l1": (0.023, 0.001), "l2": (0.048, 0.004), "linf": (0.18, 0.044),
                "cos": (0.016, 0.002)},
    "cifar100": {"l1": (0.005, 0.001), "l2": (0.016, 0.005), "linf": (0.073, 0.014),
                 "cos": (0.0, 0.0)},
}
# §VII-B3b: KS p-values of the W_0 the inverse-gradient method reaches (average, minimum)
TABLE3_KS = {
    "cifar10": {"mean": (0.044, 0.102), "min": (1.077e-28, 1.864e-28)},
    "cifar100": {"mean": (0.583e-12, 7.765e-12), "min": (0.0, 0.0)},
}

ALPHA = 0.01  # the paper's KS significance
FIG3_K = 12
PAPER_S = 390  # steps per epoch of the paper's runs (50,000 samples, batch 128)
PAPER_E = 200

# the figures' findings, in the paper's words (no numbers are printed for them)
CLAIMS = {
    "fig1": "‖ε_repr‖ grows with k; k = 1 gives ≈ 0.001, k = E·S close to 1 (Table I); "
            "k ≈ S (checkpoint every epoch) stays well below 1.",
    "fig2": "‖ε_repr‖ is still significantly below 1 at storage overhead 1× (k = S); fp16 storage "
            "halves the size with minimal error.",
    "fig3": "η has a significant impact on ‖ε_repr‖ only when set to 1 (k = 12).",
    "fig4": "the minimum p-value over layers drops to almost zero within a few steps.",
    "fig5": "the discontinuity ‖W_T − W'_s‖₂ is much larger than every valid update and similar "
            "to d_ref; the largest valid update varies little with s.",
    "fig7": "verification costs Q·k/S of training (analytic; 100% = training).",
    "appendix-d": "Newton-Krylov converges best (to 0 in ℓ∞), Broyden1 below 1e-7, gradient "
                  "descent linearly; inverting takes an order of magnitude more function calls "
                  "than training's y = x; larger learning rates fail to converge.",
}
