"""PSNR / SSIM against closed forms and a brute-force window computation."""

import math

import numpy as np
import pytest

from idsedit.errors import IdseditError
from idsedit.metrics import gaussian_window, psnr, ssim, ssim_map


def test_psnr_closed_form_and_mask():
    a = np.zeros((8, 8, 3))
    b = np.full((8, 8, 3), 0.1)  # MSE = 0.01 -> 20 dB
    assert psnr(a, b) == pytest.approx(20.0)
    assert psnr(a, a) == math.inf
    mask = np.zeros((8, 8), bool)
    mask[:2] = True
    c = b.copy()
    c[~mask] = 0.0  # only masked pixels differ
    assert psnr(a, c, mask=~mask) == math.inf and psnr(a, c, mask=mask) == pytest.approx(20.0)
    assert math.isnan(psnr(a, b, mask=np.zeros((8, 8), bool)))


def test_ssim_of_constant_images_is_the_luminance_term():
    # sigma = 0 everywhere, so SSIM = (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1) exactly
    u, v, c1 = 0.3, 0.7, 0.01 ** 2
    a, b = np.full((16, 20), u), np.full((16, 20), v)
    expected = (2 * u * v + c1) / (u * u + v * v + c1)
    m = ssim_map(a, b)
    assert m.shape == (6, 10)
    np.testing.assert_allclose(m, expected, rtol=1e-10)
    assert ssim(np.random.default_rng(0).random((16, 16, 3)), np.random.default_rng(0).random((16, 16, 3))) == 1.0


def test_ssim_matches_a_brute_force_window():
    rng = np.random.default_rng(1)
    a, b = rng.random((15, 13)), rng.random((15, 13))
    g = gaussian_window()
    assert g.size == 11 and g.sum() == pytest.approx(1.0) and g[5] == g.max()
    assert g[4] / g[5] == pytest.approx(math.exp(-1 / (2 * 1.5 ** 2)))
    w = np.outer(g, g)
    i, j = 3, 1  # window rows 3..13, cols 1..11
    pa, pb = a[i:i + 11, j:j + 11], b[i:i + 11, j:j + 11]
    ma, mb = (w * pa).sum(), (w * pb).sum()
    va, vb = (w * (pa - ma) ** 2).sum(), (w * (pb - mb) ** 2).sum()
    cov = (w * (pa - ma) * (pb - mb)).sum()
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    ref = (2 * ma * mb + c1) * (2 * cov + c2) / ((ma * ma + mb * mb + c1) * (va + vb + c2))
    assert ssim_map(a, b)[i, j] == pytest.approx(ref, rel=1e-9)
    # masked: a outside the mask is replaced by b, and only windows centred in the mask count
    mask = np.zeros((15, 13), bool)
    mask[2:, :9] = True
    inner = mask[5:-5, 5:-5]
    expected = ssim_map(np.where(mask, a, b), b)[inner].mean()
    assert ssim(a, b, mask=mask) == pytest.approx(expected, rel=1e-12)
    c = a.copy()
    c[~mask] = 0.5  # changes outside the mask do not count
    assert ssim(c, b, mask=mask) == pytest.approx(ssim(a, b, mask=mask), rel=1e-12)
    assert ssim(np.where(mask, b, a), b, mask=mask) == 1.0  # identical inside the mask


def test_metric_input_errors():
    with pytest.raises(IdseditError, match="same"):
        psnr(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(IdseditError, match="at least 11"):
        ssim(np.zeros((8, 8)), np.zeros((8, 8)))
