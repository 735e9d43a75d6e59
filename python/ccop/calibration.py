"""Per-model correction of the token estimate, learnt from what Ollama really counted.

The word rule cannot know each model's tokenizer. After every answer Ollama reports `prompt_eval_count`, the real
prompt size; the ratio real/estimate is smoothed per model and applied to later estimates, so `count_tokens` and
`message_start` converge on the model's true counts. State lives in the worker process: nothing to store, and a
restart simply starts again from the raw rule.
"""

from __future__ import annotations

import math

__all__ = ["Calibration"]

# Bounds keep one odd answer (a cached prompt, a template quirk) from swinging every estimate wildly.
MIN_RATIO = 0.5
MAX_RATIO = 2.0
# Weight of each new observation: about ten answers move the ratio most of the way to a new level.
SMOOTHING = 0.2
# Tiny prompts are dominated by the chat template's fixed overhead and would teach the wrong ratio.
MIN_SAMPLE_TOKENS = 64


class Calibration:
    """Smoothed real/estimate ratios, one per Ollama model."""

    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self._ratios: dict[str, float] = {}

    def ratio(self, model: str) -> float:
        return self._ratios.get(model, 1.0) if self.enabled else 1.0

    def apply(self, model: str, estimate: int) -> int:
        """The calibrated estimate; never 0 for a non-empty request."""
        if estimate <= 0:
            return estimate
        return max(1, math.ceil(estimate * self.ratio(model)))

    def observe(self, model: str, estimate: int, actual: int | None) -> None:
        """Learn from one answer: `estimate` is the raw (uncalibrated) count of the request Ollama processed."""
        if not self.enabled or actual is None or actual <= 0 or estimate < MIN_SAMPLE_TOKENS:
            return
        observed = min(MAX_RATIO, max(MIN_RATIO, actual / estimate))
        previous = self._ratios.get(model)
        self._ratios[model] = observed if previous is None else previous + SMOOTHING * (observed - previous)

    def snapshot(self) -> dict[str, float]:
        return {model: round(ratio, 4) for model, ratio in sorted(self._ratios.items())}
