"""bf16 attention backward for exact FPR: the exact fp32 attention forward, the attention BACKWARD in bf16 (CPU).

Exact FPR (idsedit.fpr) differentiates the UNet N times per step. On CPU, torch's fp32 flash-attention backward
is ~3.7x its forward at SD's small head sizes, and its bf16 kernel is ~2.7x faster than the fp32 one ((2, 8, 4096,
8), one thread: 1.24 s -> 0.45 s). Inside :func:`bf16_attention_backward` (used by exact/adaptive FPR only), each
attention product of the UNet is

    forward   o, lse = flash_attention(q, k, v)                                 fp32: the kernel F.sdpa itself runs,
                                                                                 so the forward is bit-identical
    backward  dq, dk, dv = flash_backward(bf16(do), bf16(q), bf16(k), bf16(v), bf16(o), lse)   -> cast to fp32

so only the gradient through the attention product carries bf16 rounding (unit roundoff 2^-8 = 3.9e-3 on its
inputs); projections, convolutions, norms and their backward stay fp32. Judged quality-neutral by ``idsedit eval``
(docs/eval.md) and tested against fp32 (tests/test_attention_bf16.py).

Where it applies: a CPU fp32 UNet (not torch.compile'd) on a CPU with native bf16 arithmetic (AVX512-BF16 or AMX;
elsewhere emulated bf16 makes the backward slower, see :func:`cpu_has_native_bf16`), attention modules whose
processor is diffusers' default ``AttnProcessor2_0``, calls without an attention mask, and a torch with the CPU
flash kernels (probed once). Everywhere else it falls back silently to the unchanged attention: on GPU/MPS (fp16
by default there, where the fused attention kernels are already half precision), for fp16/bf16 models, for other
processors (xformers, the explicit ``AttnProcessor``), and under autocast. ``bf16_backward_supported(unet)`` says
which applies.

Thread safety: the switch is per thread (a web server's other edits are unaffected); the wrapper processors that
make it possible are installed once per attention module and behave exactly like the wrapped ``AttnProcessor2_0``
outside the block.
"""

from __future__ import annotations

import functools
import threading
from contextlib import contextmanager

import torch
import torch.nn.functional as F

ATTENTION_BACKWARDS = ("bf16", "fp32")   # DistillConfig.fpr_attention_backward / --fpr-attention-backward

_state = threading.local()       # .depth: open bf16_attention_backward blocks of this thread
_install_lock = threading.Lock()


class Bf16BackwardSDPA(torch.autograd.Function):
    """o = softmax(q k^T / sqrt(d)) v by the CPU flash kernel in the inputs' dtype; the backward kernel in bf16
    (its fp32 logsumexp reused). q, k, v: (B, heads, N, d)."""

    @staticmethod
    def forward(ctx, q, k, v):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        b = torch.bfloat16
        dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            dout.to(b), q.to(b), k.to(b), v.to(b), out.to(b), lse, 0.0, False)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


@functools.lru_cache(maxsize=None)
def cpu_kernel_available() -> bool:
    """True when this torch has the CPU flash-attention kernels and their bf16 backward runs (probed once)."""
    try:
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, 1, 4, 8, generator=g, requires_grad=True) for _ in range(3))
        Bf16BackwardSDPA.apply(q, k, v).sum().backward()
        return all(x.grad is not None and bool(torch.isfinite(x.grad).all()) for x in (q, k, v))
    except (AttributeError, RuntimeError, NotImplementedError, TypeError):
        return False


def cpu_has_native_bf16() -> bool:
    """True on x86 CPUs with AVX512-BF16 or AMX instructions, where the bf16 kernel is the faster one.

    Without them bf16 is emulated and the bf16 backward is SLOWER than fp32 (measured at (2, 8, 4096, 8), one
    thread: 2.5 s fp32 vs 1.5 s bf16 with AVX512-BF16; oneDNN restricted to AVX512_CORE 2.9 vs 3.0 s; to AVX2 2.8 vs
    5.8 s), so it is not used there. (ARM bf16 is not measured, so not used.)
    """
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(check is not None and check() for check in checks)


def bf16_backward_supported(unet) -> bool:
    """Whether :func:`bf16_attention_backward` takes effect on this UNet (else it runs unchanged, in its dtype)."""
    if hasattr(unet, "_orig_mod"):      # torch.compile'd: swapping processors would recompile; leave it alone
        return False
    p = next(unet.parameters(), None)
    return (p is not None and p.device.type == "cpu" and p.dtype == torch.float32 and cpu_has_native_bf16()
            and cpu_kernel_available())


def active() -> bool:
    """Whether this thread is inside a :func:`bf16_attention_backward` block that took effect."""
    return getattr(_state, "depth", 0) > 0


class Bf16BackwardAttnProcessor:
    """Wraps one module's ``AttnProcessor2_0``: the wrapped processor outside :func:`bf16_attention_backward`; inside
    it, the same computation (diffusers' AttnProcessor2_0, line for line) with the attention product through
    :class:`Bf16BackwardSDPA` when it needs a gradient."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        if not active() or attention_mask is not None or args or kwargs or hidden_states.device.type != "cpu" \
                or hidden_states.dtype != torch.float32:
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size = (hidden_states if encoder_hidden_states is None else encoder_hidden_states).shape[0]
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (x.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2) for x in (query, key, value))
        if getattr(attn, "norm_q", None) is not None:
            query = attn.norm_q(query)
        if getattr(attn, "norm_k", None) is not None:
            key = attn.norm_k(key)
        hidden_states = attention_product(query, key, value)                              # (B, heads, N, d)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def attention_product(q, k, v):
    """softmax(q k^T / sqrt(d)) v: through Bf16BackwardSDPA when fp32 and a gradient is needed, else F.sdpa."""
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if needs_grad and q.dtype == k.dtype == v.dtype == torch.float32:
        return Bf16BackwardSDPA.apply(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False)


def install(unet) -> int:
    """Wrap every attention module of ``unet`` whose processor is exactly ``AttnProcessor2_0`` (idempotent, cheap:
    a walk over the modules). Returns the number of wrapped modules."""
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    n = 0
    with _install_lock:
        for module in unet.modules():
            if isinstance(module, Attention):
                if type(module.processor) is AttnProcessor2_0:
                    module.set_processor(Bf16BackwardAttnProcessor(module.processor))
                n += isinstance(module.processor, Bf16BackwardAttnProcessor)
    return n


@contextmanager
def bf16_attention_backward(unet, enabled: bool = True):
    """Inside the block, this thread's UNet attention backward runs in bf16 where supported (see the module
    docstring); yields whether it took effect (False: everything runs unchanged)."""
    on = bool(enabled) and bf16_backward_supported(unet) and install(unet) > 0
    if on:
        _state.depth = getattr(_state, "depth", 0) + 1
    try:
        yield on
    finally:
        if on:
            _state.depth -= 1
