"""Attacks that test whether forgotten knowledge comes back, and the robustness card.

Importing the package registers every built-in attack (``base.REGISTRY``); the card lists them in
``base.CARD_ORDER``: relearning on forget half A and on unrelated retain text, directional
ablation, quantization, prompt attacks, weight noise and projection removal. ``card.run_card``
runs them on one edit.
"""

from unlearnviz.attacks import (  # noqa: F401  (registration)
    ablation,
    noise,
    projection_removal,
    prompts,
    quantize,
    relearn_forget,
    relearn_retain,
)
from unlearnviz.attacks.base import (
    CARD_ORDER,
    REGISTRY,
    AttackResult,
    Variant,
    depth_kept,
    get_attack,
    harmonic_mean,
    make_settings,
    recovered_share,
)
from unlearnviz.attacks.card import ATTACKS_FILE, attack_names, run_card

__all__ = ["ATTACKS_FILE", "CARD_ORDER", "REGISTRY", "AttackResult", "Variant", "attack_names", "depth_kept",
           "get_attack", "harmonic_mean", "make_settings", "recovered_share", "run_card"]
