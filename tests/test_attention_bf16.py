"""Exact FPR's bf16 attention backward (idsedit.attention): forward bit-identical, gradient close to fp32, clean
fallback where it does not apply, the fp32 switch.

Tolerance of the gradient. The backward's inputs (dout, q, k, v, out) are rounded to bf16, whose unit roundoff is
u = 2^-8 = 3.9e-3 (relative rounding error <= u / 2 per element); only the gradient through the attention
products carries it, the rest of dL/dz_t (convolutions, projections, norms) stays fp32. So the relative error of
dL/dz_t is of order u: measured 1.0e-3 on the tiny model here, 3.2e-3 on the v1 mini prior and 4.3e-3 on v2 (fp32
itself is 3e-6 from float64). The tests bound it by 1e-2 (2.5 u; a wrong gradient is off by O(1)) and require it to be above
1e-5 (so the bf16 kernel really ran: fp32's own error is 3e-6).
"""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

import idsedit.attention as A
import idsedit.diffusion as D
from idsedit.distill import DistillConfig
from idsedit.errors import IdseditError
from idsedit.fpr import fixed_point_regularize, residual_norm

SRC = "a red square, a green triangle and a blue circle"
T = torch.tensor([500])
needs_bf16 = pytest.mark.skipif(not (A.cpu_has_native_bf16() and A.cpu_kernel_available()),
                                reason="this CPU has no native bf16 (the bf16 backward falls back to fp32 here)")


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def residual_gradient(prior, cond, z_t, z_src, *, bf16: bool):
    """(eps, dL/dz_t) of one exact FPR iteration's objective L = ||z_src - z0_hat(z_t)||, and whether bf16 ran."""
    with A.bf16_attention_backward(prior.unet, enabled=bf16) as on:
        z = z_t.clone().requires_grad_(True)
        (eps,) = prior.eps([z], T, [cond], 7.5)
        loss = residual_norm(z_src.to(z.dtype), D.x0_from_eps(z, eps, prior.alpha_bar(T).to(z.dtype)))
        (g,) = torch.autograd.grad(loss, z)
    return eps.detach(), g, on


@pytest.fixture(scope="module")
def draw():
    g = torch.Generator().manual_seed(0)
    z_src, noise = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    return z_src, noise


def z_t_of(prior, draw):
    z_src, noise = draw
    return D.add_noise(z_src, noise, prior.alpha_bar(T))


@needs_bf16
def test_kernel_forward_is_bit_identical_and_backward_close_to_float64():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 64, 8, generator=g, requires_grad=True) for _ in range(3))
    out = A.Bf16BackwardSDPA.apply(q, k, v)
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v))
    dout = torch.randn(out.shape, generator=g)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    q64, k64, v64 = (x.detach().double().requires_grad_(True) for x in (q, k, v))
    ref = torch.autograd.grad(torch.softmax(q64 @ k64.transpose(-1, -2) / 8 ** 0.5, -1) @ v64, (q64, k64, v64),
                              dout.double())
    errors = [rel(a, b) for a, b in zip(grads, ref)]
    assert all(1e-5 < e < 1e-2 for e in errors), errors


@needs_bf16
def test_unet_forward_is_bit_identical_and_fpr_gradient_close_to_fp32(tiny_prior, draw):
    cond = tiny_prior.encode_text(SRC)
    z_t = z_t_of(tiny_prior, draw)
    eps32, g32, off = residual_gradient(tiny_prior, cond, z_t, draw[0], bf16=False)
    eps16, g16, on = residual_gradient(tiny_prior, cond, z_t, draw[0], bf16=True)
    assert on and not off
    assert torch.equal(eps16, eps32)                 # the forward (what FPR's residual sees) is unchanged
    assert 1e-5 < rel(g16, g32) < 1e-2               # measured 1.0e-3: bf16 rounding, see the module docstring
    with torch.no_grad(), A.bf16_attention_backward(tiny_prior.unet):
        (eps_nograd,) = tiny_prior.eps([z_t], T, [cond], 7.5)
    assert torch.equal(eps_nograd, eps32)


@needs_bf16
def test_fpr_defaults_to_bf16_and_the_switch_gives_fp32(tiny_prior, draw):
    cond = tiny_prior.encode_text(SRC)
    z_t = z_t_of(tiny_prior, draw)
    run = lambda **kw: fixed_point_regularize(tiny_prior, draw[0], z_t, T, cond, guidance=7.5, iters=3, **kw)
    default, fp32 = run(), run(attention_backward="fp32")
    assert default.bf16_backward and not fp32.bf16_backward
    assert default.norms[0] == fp32.norms[0]         # the first residual is a forward only: identical
    assert rel(default.z_t, fp32.z_t) < 1e-3         # measured 2.9e-4 after 3 iterations
    jf = run(mode="jacobian-free")                   # forward only: nothing to switch
    assert not jf.bf16_backward
    assert DistillConfig().fpr_attention_backward == "bf16"
    with pytest.raises(IdseditError, match="bf16 or fp32"):
        DistillConfig(fpr_attention_backward="fp16")
    with pytest.raises(ValueError):
        run(attention_backward="fp16")


def test_processors_are_wrapped_once_and_unchanged_outside_the_block(tiny_prior, draw):
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    cond = tiny_prior.encode_text(SRC)
    z_t = z_t_of(tiny_prior, draw)
    n_attention = sum(isinstance(m, Attention) for m in tiny_prior.unet.modules())
    assert A.install(tiny_prior.unet) == n_attention == A.install(tiny_prior.unet)
    for m in tiny_prior.unet.modules():
        if isinstance(m, Attention):
            assert isinstance(m.processor, A.Bf16BackwardAttnProcessor)
            assert type(m.processor.inner) is AttnProcessor2_0
    _, g_wrapped, _ = residual_gradient(tiny_prior, cond, z_t, draw[0], bf16=False)
    tiny_prior.unet.set_attn_processor(AttnProcessor2_0())          # what the UNet had
    try:
        _, g_plain, _ = residual_gradient(tiny_prior, cond, z_t, draw[0], bf16=False)
    finally:
        A.install(tiny_prior.unet)
    assert torch.equal(g_wrapped, g_plain)


@needs_bf16
def test_the_switch_is_per_thread(tiny_prior, draw):
    """A forward + backward in another thread while this one is inside the block gets the fp32 gradient."""
    cond = tiny_prior.encode_text(SRC)
    z_t = z_t_of(tiny_prior, draw)
    _, g32, _ = residual_gradient(tiny_prior, cond, z_t, draw[0], bf16=False)
    seen = {}
    with A.bf16_attention_backward(tiny_prior.unet) as on:
        worker = threading.Thread(target=lambda: seen.update(g=residual_gradient(tiny_prior, cond, z_t, draw[0],
                                                                                 bf16=False)[1]))
        worker.start()
        worker.join()
        assert on and A.active()
    assert not A.active()
    assert torch.equal(seen["g"], g32)


def test_falls_back_where_bf16_does_not_apply(tiny_prior, draw, monkeypatch):
    """fp16/bf16 UNets (GPU's default dtype is fp16), non-CPU devices, compiled UNets and CPUs without native bf16:
    nothing is installed or switched and FPR's result is bit-identical to the fp32 path."""
    import copy

    unet = tiny_prior.unet
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        assert not A.bf16_backward_supported(copy.deepcopy(unet).to(dtype))
    assert not A.bf16_backward_supported(copy.deepcopy(unet).to("meta"))      # stands for cuda / mps
    compiled = torch.nn.Module()
    compiled._orig_mod = unet
    assert not A.bf16_backward_supported(compiled)

    cond = tiny_prior.encode_text(SRC)
    z_t = z_t_of(tiny_prior, draw)
    run = lambda mode: fixed_point_regularize(tiny_prior, draw[0], z_t, T, cond, guidance=7.5, iters=2,
                                              attention_backward=mode)
    monkeypatch.setattr(A, "cpu_has_native_bf16", lambda: False)
    fallback, fp32 = run("bf16"), run("fp32")
    assert not fallback.bf16_backward and torch.equal(fallback.z_t, fp32.z_t) and fallback.norms == fp32.norms
    with A.bf16_attention_backward(unet) as on:
        assert not on and not A.active()


def test_processor_delegates_non_fp32_and_masked_calls_even_inside_the_block(tiny_prior):
    """Under autocast or in a half-precision UNet the wrapper runs the wrapped processor (the per-call guard)."""
    from diffusers.models.attention_processor import Attention

    attn = next(m for m in tiny_prior.unet.modules() if isinstance(m, Attention))
    calls = []

    def inner(*args, **kwargs):
        calls.append(args[1].dtype)
        return args[1]

    proc = A.Bf16BackwardAttnProcessor(inner)
    x = torch.randn(1, 16, attn.to_q.in_features)
    A._state.depth = 1                               # as inside a block that took effect
    try:
        proc(attn, x.half())
        proc(attn, x, attention_mask=torch.ones(1, 16))
        out = proc(attn, x.requires_grad_(True))
    finally:
        A._state.depth = 0
    assert calls == [torch.float16, torch.float32]
    assert out.shape == x.shape and out.requires_grad
