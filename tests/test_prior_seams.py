"""The Prior's seams for other features: a differentiable encode (NeRF), per-thread counting and CDS hooks for a
shared prior (web UI), a bounded text cache, and the closed-vocabulary prompt warning (the mini prior)."""

from __future__ import annotations

import copy
import json
import shutil
import threading
import warnings

import pytest
import torch

import idsedit.prior as P
from idsedit.distill import METHODS, DistillConfig
from idsedit.rng import Sampler
from conftest import TINY_MODEL

T = torch.tensor([500])


def rnd(seed, shape=(1, 4, 8, 8)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------- differentiable encode
def test_encode_with_grad_matches_float64_finite_differences(tiny_prior):
    """d/dx sum(w * encode(x, grad=True)) along a direction d equals a float64 central difference."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 64, 64, generator=gen).requires_grad_(True)
    w = torch.randn(1, 4, 8, 8, generator=gen)
    d = torch.randn(1, 3, 64, 64, generator=gen)
    z = tiny_prior.encode(x, grad=True)
    assert z.requires_grad and not any(p.requires_grad for p in tiny_prior.vae.parameters())
    (g,) = torch.autograd.grad((w * z).sum(), x)
    p64 = copy.copy(tiny_prior)                       # the same prior with a float64 copy of its VAE
    p64.vae = copy.deepcopy(tiny_prior.vae).double()
    h = 1e-4
    x64, w64, d64 = x.detach().double(), w.double(), d.double()
    fd = ((w64 * p64.encode(x64 + h * d64)).sum() - (w64 * p64.encode(x64 - h * d64)).sum()) / (2 * h)
    torch.testing.assert_close((g.double() * d64).sum(), fd, rtol=1e-4, atol=1e-6)
    # grad=False (the default) keeps no graph, and gives the same latents
    z0 = tiny_prior.encode(x)
    assert not z0.requires_grad
    torch.testing.assert_close(z0, z.detach())


# ------------------------------------------------------------------------------------------- a shared prior
def test_counting_counts_only_this_threads_calls_and_nests(tiny_prior):
    c = tiny_prior.encode_text("a red cube")
    total0 = tiny_prior.calls.snapshot()
    with tiny_prior.counting() as outer:
        with torch.no_grad():
            tiny_prior.eps([rnd(0)], T, [c], 7.5)                         # 1 forward, 2 samples
        with tiny_prior.counting() as inner:
            z = rnd(1).requires_grad_(True)
            (e,) = tiny_prior.eps([z], T, [c], 1.0)                      # 1 forward, 1 sample, 1 backward
            e.sum().backward()
        other = threading.Thread(target=lambda: tiny_prior.eps([rnd(2)], T, [c], 7.5))  # not this thread's
        other.start()
        other.join()
    assert inner.snapshot() == {"forward": 1, "samples": 1, "backward": 1}
    assert outer.snapshot() == {"forward": 2, "samples": 3, "backward": 1}
    total = tiny_prior.calls.snapshot()
    assert {k: total[k] - total0[k] for k in total} == {"forward": 3, "samples": 5, "backward": 1}
    assert isinstance(tiny_prior.lock, type(threading.RLock()))


def _cds_job(prior, seed, src, trg):
    """One CDS step (with the backward of its PatchNCE loss), counted: (grad, aux, d aux / d z_trg, counts)."""
    cs, ct = prior.encode_text(src), prior.encode_text(trg)
    z_src, z_trg = rnd(seed), rnd(seed + 1).requires_grad_(True)
    with prior.counting() as calls:
        out = METHODS["cds"].fn(prior, z_src, z_trg, T, rnd(seed + 2), cs, ct, DistillConfig(),
                                Sampler(torch.Generator().manual_seed(seed)))
        (g,) = torch.autograd.grad(out.aux_loss, z_trg)
    return out.grad, out.aux_loss.detach(), g, calls.snapshot()


def test_two_threads_running_cds_get_what_they_get_alone(tiny_prior):
    jobs = [(10, "a red cube", "a blue cube"), (20, "a green cone on a gray floor", "a pink torus")]
    alone = [_cds_job(tiny_prior, *j) for j in jobs]
    assert alone[0][3] == {"forward": 2, "samples": 4, "backward": 1}   # batch 3 + the target's grad call
    results: dict[int, list] = {0: [], 1: []}
    barrier = threading.Barrier(2)
    errors = []

    def worker(i):
        try:
            for _ in range(3):
                barrier.wait()
                results[i].append(_cds_job(tiny_prior, *jobs[i]))
        except BaseException as e:  # surfaced below
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    for i in range(2):
        for grad, aux, g, counts in results[i]:
            assert counts == alone[i][3]
            torch.testing.assert_close(grad, alone[i][0], rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(aux, alone[i][1], rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(g, alone[i][2], rtol=1e-6, atol=1e-6)


def test_text_cache_is_bounded_lru(tiny_prior, monkeypatch):
    monkeypatch.setattr(P, "TEXT_CACHE_SIZE", 2)
    p = copy.copy(tiny_prior)
    p._text_cache = type(tiny_prior._text_cache)()
    a = p.encode_text("a red cube")
    b = p.encode_text("a blue cube")
    assert p.encode_text("a red cube") is a           # hit; "a red cube" is now the most recent
    p.encode_text("a green cube")                     # evicts the least recently used: "a blue cube"
    assert len(p._text_cache) == 2
    assert p.encode_text("a red cube") is a
    b2 = p.encode_text("a blue cube")
    assert b2 is not b and torch.equal(b2.embeds, b.embeds)


# ------------------------------------------------------------------------------------------- vocabulary
@pytest.fixture(scope="module")
def mini_prior():
    return P.load_prior(device="cpu", dtype="fp32")


def _warnings(prior, prompt):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        prior.check_prompt(prompt, "target prompt")
    return [str(x.message) for x in w]


def test_closed_vocabulary_prior_warns_about_unknown_words(mini_prior):
    assert mini_prior.vocabulary is not None and {"red", "cube", "floor"} <= mini_prior.vocabulary
    (msg,) = _warnings(mini_prior, "a photo of a cat")
    assert "unknown: photo, cat)" in msg and "--model" in msg and "\n" not in msg
    assert _warnings(mini_prior, "A small red cube on a gray floor") == []


def test_open_vocabulary_prior_never_warns(tiny_prior):
    assert tiny_prior.vocabulary is None
    assert _warnings(tiny_prior, "a photo of a cat") == []
    assert _warnings(tiny_prior, "a xyzzyq quuxfrob in the style of zdzislaw beksinski") == []


def test_mini_export_record_marks_a_closed_vocabulary(tmp_path):
    """A folder with idsedit's export record is closed even with the full CLIP tokenizer."""
    folder = tmp_path / "exported"
    shutil.copytree(TINY_MODEL, folder)
    (folder / P.MINI_EXPORT_RECORD).write_text(json.dumps({"recipe": {}, "unet": {"step": 1}}))
    p = P.load_prior(str(folder), device="cpu", dtype="fp32")
    assert p.vocabulary is not None and "cube" in p.vocabulary
    (msg,) = _warnings(p, "a cube made of qwzx")
    assert "unknown: qwzx)" in msg and "this model does not know" in msg
