"""Built-in hint rules, registered through the public ``register_hints`` hook.

Rules read only the metric history, so importing this plugin never imports torch
or a UI library.
"""

from __future__ import annotations

from mario_cli.api import HintRule, Register, hookimpl
from mario_hints.rules import (
    entropy_collapsed,
    kl_too_large,
    progress_plateau,
    progress_stalled,
    updates_stalled,
    value_not_learning,
)
from mario_hints.settings import (
    EntropyCollapsedSettings,
    KlTooLargeSettings,
    ProgressPlateauSettings,
    ProgressStalledSettings,
    UpdatesStalledSettings,
    ValueNotLearningSettings,
)

RULES = {
    "updates-stalled": updates_stalled,
    "entropy-collapsed": entropy_collapsed,
    "kl-too-large": kl_too_large,
    "value-not-learning": value_not_learning,
    "progress-plateau": progress_plateau,
    "progress-stalled": progress_stalled,
}


SETTINGS = {
    "updates-stalled": UpdatesStalledSettings,
    "entropy-collapsed": EntropyCollapsedSettings,
    "kl-too-large": KlTooLargeSettings,
    "value-not-learning": ValueNotLearningSettings,
    "progress-plateau": ProgressPlateauSettings,
    "progress-stalled": ProgressStalledSettings,
}


@hookimpl
def register_hints(register: Register[HintRule]) -> None:
    for name, rule in RULES.items():
        register(name, rule, settings=SETTINGS[name])
