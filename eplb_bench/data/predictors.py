"""Predictors: the load a balancer is handed to plan the next window on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch



# ---------------------------------------------------------------- predictors


@dataclass(frozen=True)
class Predictor:
    """What the balancer is given to plan for window i + 1.

    `last`: window i itself (the public evaluators' protocol). `ema:ALPHA`: the
    exponential moving average e_i = ALPHA * w_i + (1 - ALPHA) * e_(i-1), e_0 = w_0.
    """

    kind: str = "last"
    alpha: float = 1.0

    def label(self) -> str:
        return "last" if self.kind == "last" else f"ema:{self.alpha:g}"


def parse_predictor(text: str) -> Predictor:
    """`last` or `ema:ALPHA` with 0 < ALPHA <= 1; ValueError otherwise."""
    if text == "last":
        return Predictor()
    kind, _, value = text.partition(":")
    if kind == "ema":
        try:
            alpha = float(value)
        except ValueError:
            alpha = float("nan")
        if 0 < alpha <= 1:
            return Predictor("ema", alpha)
    raise ValueError(f"unknown predictor {text!r} (expected last or ema:ALPHA with 0 < ALPHA <= 1)")


def predicted_windows(windows: torch.Tensor, predictor: Predictor) -> torch.Tensor:
    """windows: [W, L, E] -> [W, L, E], entry i being what the balancer plans on at window i."""
    if predictor.kind == "last":
        return windows
    smoothed = torch.empty(windows.shape, dtype=torch.float64, device=windows.device)
    smoothed[0] = windows[0]
    for i in range(1, windows.shape[0]):
        smoothed[i] = predictor.alpha * windows[i] + (1 - predictor.alpha) * smoothed[i - 1]
    return smoothed
