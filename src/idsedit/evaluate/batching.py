"""Batched edits: K cases of one run share every UNet call, each keeping its own draws and its own step.

Why. On a CPU the bundled mini prior (16x16x4 latents, a 3.2 M-parameter UNet) is per-call-overhead bound at the
batch sizes one edit makes: one thread, machine loaded, a forward of 4 samples took 34 ms per sample and of 32
samples 20 ms per sample; a forward + backward of 2 samples 88 ms per sample and of 16 samples 48 (docs/eval.md,
"Batched edits"). K cases in one edit loop therefore cost much less than K loops.

What stays exactly as in K separate edits (``tests/test_eval_batching.py`` checks each against K unbatched runs):

- Pairing. Case k draws its t and eps (and PDS's second noise) from its own :class:`PairedSampler`, in the loop's
  order, exactly as alone; :class:`BatchSampler` only stacks the K draws. The UNet gets one timestep per sample
  (t is a (K,) tensor: a diffusers UNet takes per-sample timesteps), so the K cases do NOT share t: every method
  still sees, on every case, the same t and noise sequence as every other method.
- The step. :func:`idsedit.loop.distill_loss` divides by the number of views B (a mean over views, right for a scene's
  shared field); for K independent latents the runner multiplies ``loss_scale`` by K, so each case's gradient is
  the official one. SGD without momentum updates each element on its own.
- FPR. The exact FPR loss is the sum of per-sample norms, so d L / d z_t[k] is case k's own gradient; the
  Jacobian-free step is per sample. The per-case residuals (the row's ``fpr`` field) are recomputed from each FPR
  call's eps by :class:`BatchPrior` (the method's own ``fpr_norms`` are sums over the batch).

- CDS's and IDS+CUT's PatchNCE term. It contrasts patches within each sample, so the only shared parts are the
  patch permutation and the mean over the batch: :meth:`BatchSampler.permutation_per_sample` gives each case the
  permutations its own sampler would draw alone, and :func:`batch_config` multiplies ``cut_weight`` by K as it does
  ``loss_scale``.

Which runs batch (:func:`batchable`): SDS, DDS, CDS, PDS and IDS with exact or Jacobian-free FPR, with or without
CUT. Not adaptive FPR (it stops all samples at the same iteration, from the summed residual), not SDXL (pooled
embeddings); those run one case at a time.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import diffusion as D


def batchable(run, prior) -> bool:
    """Whether K cases of ``run`` can share UNet calls with per-case results identical to K separate edits."""
    if run.variant == "none" or getattr(prior, "is_sdxl", False):
        return False
    cfg = run.config
    if cfg.method in ("sds", "dds", "cds", "pds"):
        return True
    return cfg.method == "ids" and cfg.distill.fpr_mode in ("exact", "jacobian-free")


def batch_config(config, k: int):
    """The EditConfig of a batch of k independent edits: the loss's mean over the batch (``loss_scale``, and
    ``cut_weight`` for the PatchNCE term) multiplied by k, so each case takes its own official step."""
    import dataclasses

    return dataclasses.replace(config, seed=None, loss_scale=config.loss_scale * k,
                               distill=dataclasses.replace(config.distill, cut_weight=config.distill.cut_weight * k))


class BatchSampler:
    """K per-case samplers behind the loop's one-sampler interface: ``randint`` gives the K cases' t as a (K,)
    tensor, ``randn_like(x)`` stacks each case's draw for its row of x (each from the stream it would use alone)."""

    def __init__(self, samplers: list):
        self.samplers = list(samplers)

    def randint(self, low: int, high: int, device="cpu") -> Tensor:
        return torch.cat([s.randint(low, high, device=device).flatten() for s in self.samplers])

    def randn_like(self, x: Tensor) -> Tensor:
        if x.shape[0] != len(self.samplers):
            raise ValueError(f"a batched draw needs one row per case: {x.shape[0]} rows, {len(self.samplers)} cases")
        return torch.cat([s.randn_like(x[k:k + 1]) for k, s in enumerate(self.samplers)])

    def permutation(self, n: int, device="cpu"):
        raise RuntimeError("a batched edit draws one permutation per case (permutation_per_sample), not one shared")

    def permutation_per_sample(self, n: int, device="cpu") -> list[Tensor]:
        """Each case's next permutation of range(n), from the stream it would use alone."""
        return [s.permutation(n, device=device) for s in self.samplers]


class _RowsOfPrompts:
    """Stand-in for ``Cond.embeds`` of K prompts: ``[r:r + 1]`` gives row r (0: negative, 1: prompt) of every
    prompt, (K, L, D), which :meth:`idsedit.prior.Prior.eps` expands to the batch of K (a no-op); a list of rows
    (``[0, 0]``: CDS's unconditional Cond) gives the stand-in of those rows."""

    def __init__(self, embeds: list[Tensor] | Tensor):
        self.stack = embeds if isinstance(embeds, Tensor) else torch.stack(list(embeds))   # (K, 2, L, D)

    def __getitem__(self, rows):
        if isinstance(rows, list):
            return _RowsOfPrompts(self.stack[:, rows])
        if not (isinstance(rows, slice) and rows.stop == rows.start + 1):
            raise IndexError("stacked prompt embeddings are read one row kind at a time ([r:r + 1])")
        return self.stack[:, rows.start]


def stack_conds(conds: list):
    """One Cond for K prompts (same negative prompt), for a batch whose row k belongs to prompt k."""
    from ..prior import Cond

    return Cond(" | ".join(c.prompt for c in conds), conds[0].negative, _RowsOfPrompts([c.embeds for c in conds]))


class BatchPrior:
    """The prior, with ``eps`` also recording each FPR call's per-sample residual ||z_src[k] - z0_hat[k]||
    (with ``record`` on, the calls with one latent conditioned on ``cond_src``: IDS's FPR calls; the final
    delta-score call has two latents, IDS+CUT's target call is conditioned on the target). Everything else is the
    prior's."""

    def __init__(self, prior, z_src: Tensor, record: bool = False, cond_src=None):
        self._prior, self._z_src, self._record, self._cond_src = prior, z_src, record, cond_src
        self.residuals: list[list[float]] = []   # per FPR call of the current step: K residuals

    def __getattr__(self, name):
        return getattr(self._prior, name)

    def eps(self, z_ts, t, conds, guidance):
        out = self._prior.eps(z_ts, t, conds, guidance)
        if self._record and len(z_ts) == 1 and (self._cond_src is None or conds[0] is self._cond_src):
            with torch.no_grad():
                z = z_ts[0].detach()
                ab = self._prior.alpha_bar(t, z.ndim)
                z0 = D.x0_from_eps(z, out[0].detach(), ab)
                self.residuals.append(torch.linalg.vector_norm((self._z_src - z0).flatten(1), dim=1).tolist())
        return out

    def take_residuals(self) -> list[list[float]]:
        """The current step's residuals per case: [case][iteration]; clears them."""
        per_case = [list(r) for r in zip(*self.residuals)] if self.residuals else []
        self.residuals = []
        return per_case
