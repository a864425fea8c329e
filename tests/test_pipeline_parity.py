"""Prior.eps against diffusers' own pipelines: one guided prediction equals the one the pipeline computes inside its
denoising step (same latents, t, prompt, negative prompt, guidance) on tiny random SD 1.x, SD 2.x (v-prediction)
and SDXL models.

The pipeline runs ONE step of a DDPM schedule with custom ``timesteps=[t]``; wrapping ``scheduler.step`` records
the guided model output (eps, or v for v-prediction) and the scheduler's own ``pred_original_sample`` x0. For
epsilon models the guided eps is compared directly; for every model the x0 that the scheduler derives from the
pipeline's prediction is compared with Tweedie's x0 from Prior.eps, so the v -> eps conversion is checked by
diffusers' scheduler, not by idsedit's own formula.
"""

from __future__ import annotations

import pytest
import torch

import idsedit.diffusion as D
from idsedit.prior import Prior
from tiny_models import tiny_sd1_pipeline, tiny_sd2_v_pipeline, tiny_sdxl_pipeline

BUILDERS = {"sd1": tiny_sd1_pipeline, "sd2-v": tiny_sd2_v_pipeline, "sdxl": tiny_sdxl_pipeline}


def pipeline_step(pipe, prompt, negative, z_t, t, guidance):
    """(guided model output, scheduler x0) that ``pipe`` computes in its one denoising step at timestep t."""
    rec = {}
    step = pipe.scheduler.step

    def recording_step(model_output, timestep, sample, *args, return_dict=True, **kwargs):
        out = step(model_output, timestep, sample, *args, return_dict=True, **kwargs)
        rec.update(out=model_output.clone(), t=int(timestep), sample=sample.clone(), x0=out.pred_original_sample)
        return out if return_dict else (out.prev_sample,)

    pipe.scheduler.step = recording_step
    pipe.set_progress_bar_config(disable=True)
    try:
        size = z_t.shape[-1] * pipe.vae_scale_factor
        pipe(prompt, negative_prompt=negative, latents=z_t.clone(), timesteps=[t], guidance_scale=guidance,
             height=size, width=size, output_type="latent")
    finally:
        del pipe.scheduler.step
    assert rec["t"] == t and torch.equal(rec["sample"], z_t)  # the step ran at t on our latents, unscaled
    return rec["out"], rec["x0"]


@pytest.mark.parametrize("kind", list(BUILDERS))
@pytest.mark.parametrize("negative", ["", "blurry, low quality"])
def test_guided_eps_equals_the_pipelines_noise_prediction(kind, negative):
    pipe = BUILDERS[kind]()
    prior = Prior(pipe, device="cpu", dtype="fp32")
    t, w = 420, 7.5
    z_t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        (eps,) = prior.eps([z_t], torch.tensor([t]), [prior.encode_text("a red cube on a gray floor", negative)], w)
    out, x0 = pipeline_step(pipe, "a red cube on a gray floor", negative or None, z_t, t, w)
    if prior.prediction_type == "epsilon":
        torch.testing.assert_close(eps, out, rtol=1e-5, atol=1e-5)
    ab = prior.alpha_bar(torch.tensor([t]))
    torch.testing.assert_close(D.x0_from_eps(z_t, eps, ab), x0, rtol=1e-4, atol=1e-4)
