"""Where randomness comes from: one seeded generator, or the global RNGs (the official code's behaviour).

The methods are pure functions: the loop draws t and eps, and anything else a method needs (PDS's second noise,
CDS's patch permutations) comes from the :class:`Sampler` it is handed, so a test can inject exact values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass
class Sampler:
    """Draws in a fixed order from ``generator`` (a seeded torch.Generator) or, when it is None, from torch's
    global RNG; ``numpy_permutations`` draws patch permutations with ``np.random.permutation`` as the official
    CDS/IDS code does (so ``torch.manual_seed(0); np.random.seed(0)`` reproduces its trajectories)."""

    generator: torch.Generator | None = None
    numpy_permutations: bool = False

    @classmethod
    def seeded(cls, seed: int | None, device: str | torch.device = "cpu") -> "Sampler":
        """A seeded sampler; ``seed=None`` falls back to the global RNGs (official behaviour)."""
        if seed is None:
            return cls(None, numpy_permutations=True)
        return cls(torch.Generator(device=device).manual_seed(int(seed)))

    def randint(self, low: int, high: int, device: str | torch.device = "cpu") -> Tensor:
        """One integer in [low, high), shape (1,) (``torch.randint(low, high, (1,))``)."""
        return torch.randint(low, high, (1,), generator=self.generator, device=self._device(device))

    def randn_like(self, x: Tensor) -> Tensor:
        """Standard normal noise shaped like x (``torch.randn_like``)."""
        if self.generator is None:
            return torch.randn_like(x)
        return torch.randn(x.shape, generator=self.generator, device=self.generator.device, dtype=x.dtype).to(x.device)

    def permutation(self, n: int, device: str | torch.device = "cpu") -> Tensor:
        """A random permutation of range(n) as a long tensor."""
        if self.numpy_permutations:
            return torch.from_numpy(np.random.permutation(n)).long().to(device)
        return torch.randperm(n, generator=self.generator, device=self._device(device)).to(device)

    def _device(self, device):
        return self.generator.device if self.generator is not None else device


class PairedSampler(Sampler):
    """Two seeded streams: the step stream (t, then the step's eps, in the loop's order) and a method stream
    for any other draw; optionally t on a grid t = stride k + offset, k ~ U{lo, ..., hi - 1}."""

    def __init__(self, seed: int, t_grid: tuple[int, int, int, int] | None = None, device: str = "cpu"):
        super().__init__(torch.Generator(device=device).manual_seed(int(seed)))
        self.method_generator = torch.Generator(device=device).manual_seed(int(seed) + 1_000_003)
        self.t_grid = t_grid
        self._eps_pending = False  # the next randn_like is the step's eps (draw_step: t first, then eps)

    def randint(self, low: int, high: int, device="cpu"):
        if self.t_grid is not None:
            stride, offset, lo, hi = self.t_grid
            t = torch.randint(lo, hi, (1,), generator=self.generator) * stride + offset
        else:
            t = torch.randint(low, high, (1,), generator=self.generator)
        self._eps_pending = True
        return t

    def randn_like(self, x):
        gen = self.generator if self._eps_pending else self.method_generator
        self._eps_pending = False
        return torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)

    def permutation(self, n: int, device="cpu"):
        return torch.randperm(n, generator=self.method_generator).to(device)
