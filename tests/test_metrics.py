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


# ------------------------------------------------------------------------------------------ evaluation statistics
def test_psnr_of_known_noise_levels():
    """Gaussian noise of standard deviation sigma (no clipping) has MSE ~ sigma^2, so PSNR ~ -20 log10(sigma)."""
    rng = np.random.default_rng(0)
    img = rng.uniform(0.3, 0.7, (128, 128, 3))
    for sigma in (0.01, 0.03, 0.1):
        noisy = img + rng.normal(0.0, sigma, img.shape)
        assert psnr(img, noisy) == pytest.approx(-20 * math.log10(sigma), abs=0.05)
    assert psnr(img, img.copy()) == math.inf and ssim(img, img.copy()) == pytest.approx(1.0)


def test_capped_and_latent_psnr():
    from idsedit.metrics import PSNR_CAP, capped_psnr, latent_psnr

    assert capped_psnr(math.inf) == PSNR_CAP and capped_psnr(12.5) == 12.5 and math.isnan(capped_psnr(math.nan))
    z = np.array([[1.0, -2.0], [0.5, 0.0]])
    assert latent_psnr(z, z) == PSNR_CAP
    # peak = max|z| = 2, MSE = 0.1^2 -> 10 log10(4 / 0.01) = 26.0206 dB
    assert latent_psnr(z, z + 0.1) == pytest.approx(10 * math.log10(4 / 0.01))
    assert latent_psnr(z, z + 0.1, peak=1.0) == pytest.approx(20.0)
    with pytest.raises(IdseditError, match="same shape"):
        latent_psnr(z, z[0])


def test_bootstrap_ci_of_a_known_distribution():
    from idsedit.metrics import bootstrap_ci

    rng = np.random.default_rng(1)
    x = rng.normal(3.0, 2.0, 400)
    m, lo, hi = bootstrap_ci(x, n_boot=4000)
    assert m == pytest.approx(x.mean()) and lo < m < hi
    # the normal-theory interval is mean +- 1.96 s / sqrt(n): width 3.92 * 2 / 20 = 0.392
    assert hi - lo == pytest.approx(3.92 * x.std(ddof=1) / 20, rel=0.1)
    assert lo < 3.0 < hi
    # coverage: over many samples of n = 40 the 95% interval holds the true mean about 95% of the time
    hits = sum(lo <= 0.5 <= hi for lo, hi in
               (bootstrap_ci(rng.normal(0.5, 1.0, 40), n_boot=400, seed=k)[1:] for k in range(300)))
    assert 0.88 <= hits / 300 <= 0.99
    # a rate: 0/1 values
    m, lo, hi = bootstrap_ci([1, 1, 0, 1, 0, 1, 1, 1, 0, 1])
    assert m == 0.7 and 0.3 <= lo < 0.7 < hi <= 1.0
    assert bootstrap_ci([2.0]) == (2.0, 2.0, 2.0)
    assert all(math.isnan(v) for v in bootstrap_ci([math.nan]))
    assert bootstrap_ci([1.0, math.nan, 3.0], n_boot=50)[0] == 2.0          # nan values are dropped


def test_paired_bootstrap_cancels_what_cases_share():
    from idsedit.metrics import bootstrap_ci, paired_bootstrap_ci

    rng = np.random.default_rng(2)
    difficulty = rng.normal(20.0, 5.0, 60)            # what a case does to every method
    a = difficulty + 0.5 + rng.normal(0, 0.1, 60)
    b = difficulty
    m, lo, hi = paired_bootstrap_ci(a, b)
    assert m == pytest.approx(0.5, abs=0.05) and 0 < lo < 0.5 < hi and hi - lo < 0.1
    # unpaired, the same data's difference of means is lost in the case-to-case spread
    ua, ub = bootstrap_ci(a), bootstrap_ci(b)
    assert ua[1] < ub[2]                               # overlapping intervals
    assert paired_bootstrap_ci([1.0, 2.0], [1.0, 2.0]) == (0.0, 0.0, 0.0)
    with pytest.raises(IdseditError, match="same length"):
        paired_bootstrap_ci([1.0], [1.0, 2.0])
