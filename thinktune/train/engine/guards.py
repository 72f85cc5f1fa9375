"""Guards that keep a run from going wrong silently: non-finite steps and gradient-norm spikes."""

from __future__ import annotations

import math
from collections import deque


def is_finite(*values: float | None) -> bool:
    return all(v is None or math.isfinite(v) for v in values)


class SpikeDetector:
    """Gradient-norm spike: above mean + k·σ of the previous `window` norms (seed 001: k = 3)."""

    def __init__(self, window: int = 20, sigma: float = 3.0, warmup: int | None = None):
        self.history: deque[float] = deque(maxlen=window)
        self.sigma = sigma
        self.warmup = warmup if warmup is not None else max(5, window // 2)

    def threshold(self) -> float | None:
        if len(self.history) < self.warmup:
            return None
        mean = sum(self.history) / len(self.history)
        var = sum((x - mean) ** 2 for x in self.history) / len(self.history)
        return mean + self.sigma * math.sqrt(var)

    def update(self, grad_norm: float) -> bool:
        """Record a norm; True when it is a spike (spikes are not added to the history)."""
        limit = self.threshold()
        if limit is not None and grad_norm > limit:
            return True
        self.history.append(grad_norm)
        return False


class Plateau:
    """Early stopping and reduce-on-plateau on one validation metric (seed 001: three evaluations without gain)."""

    def __init__(self, mode: str = "min", min_delta: float = 0.0):
        self.mode, self.min_delta = mode, min_delta
        self.best: float | None = None
        self.bad_evals = 0

    def update(self, value: float) -> bool:
        """Record a validation value; True when it improved on the best so far."""
        better = (
            self.best is None
            or (self.mode == "min" and value < self.best - self.min_delta)
            or (self.mode == "max" and value > self.best + self.min_delta)
        )
        if better:
            self.best, self.bad_evals = value, 0
        else:
            self.bad_evals += 1
        return better
