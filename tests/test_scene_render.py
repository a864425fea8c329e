"""Volume rendering against closed forms, and the TensoRF field's pieces."""

from __future__ import annotations

import math

import pytest
import torch

from idsedit.scene.field import FieldConfig, TensoRF, sh_basis
from idsedit.scene.render import camera_rays, composite, depth_for_files, ray_box, render_rays


class ConstantSphere:
    """sigma = SIGMA inside a sphere (centre C, radius R), 0 outside; colour COLOUR; background BG."""

    SIGMA, R = 3.0, 0.5
    C = torch.tensor([0.1, -0.2, 0.05])
    COLOUR = torch.tensor([0.2, 0.6, 0.9])
    BG = torch.tensor([1.0, 0.5, 0.0])

    def __init__(self):
        self.lo, self.hi = torch.full((3,), -1.0), torch.full((3,), 1.0)

    def occupied(self, p):
        return torch.ones(p.shape[0], dtype=torch.bool)

    def density(self, p):
        return torch.where((p - self.C).norm(dim=-1) <= self.R, self.SIGMA, 0.0)

    def colour(self, p, d):
        return self.COLOUR.expand(p.shape[0], 3)

    def background(self, d):
        return self.BG.expand(d.shape[0], 3)


def closed_form(b: float, dist: float, sigma: float, r: float):
    """A ray passing the centre at distance b, starting ``dist`` before the point of closest approach:
    chord L = 2 sqrt(r^2 - b^2), entry t0 = dist - L / 2; opacity 1 - exp(-sigma L);
    E[t | the ray ends in the sphere] = t0 + 1/sigma - L exp(-sigma L) / (1 - exp(-sigma L))."""
    L = 2 * math.sqrt(r * r - b * b)
    e = math.exp(-sigma * L)
    return 1 - e, dist - L / 2 + 1 / sigma - L * e / (1 - e)


def test_constant_density_sphere_opacity_and_depth():
    f = ConstantSphere()
    dist = 2.5
    bs = [0.0, 0.2, 0.35, 0.45, 0.6]   # the last misses the sphere
    d = torch.tensor([[0.0, 0.0, -1.0]]).expand(len(bs), 3).contiguous()
    o = torch.stack([f.C + torch.tensor([b, 0.0, dist]) for b in bs])
    out = render_rays(f, o, d, step=2e-4, weight_eps=0.0)
    for k, b in enumerate(bs):
        if b < f.R:
            op, depth = closed_form(b, dist, f.SIGMA, f.R)
            assert float(out.opacity[k]) == pytest.approx(op, abs=2e-4)
            assert float(out.depth[k]) == pytest.approx(depth, abs=2e-4)
            want = op * f.COLOUR + (1 - op) * f.BG
            torch.testing.assert_close(out.rgb[k], want, atol=2e-4, rtol=0)
        else:
            assert float(out.opacity[k]) == 0.0 and math.isinf(float(out.depth[k]))
            torch.testing.assert_close(out.rgb[k], f.BG)


def test_composite_hand_computed():
    """Two samples: alpha = 1 - exp(-sigma step); w = (a1, (1 - a1) a2)."""
    sigma = torch.tensor([[1.0, 2.0]])
    rgb = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    t = torch.tensor([[1.0, 3.0]])
    out = composite(sigma, rgb, t, 0.5, torch.tensor([[0.0, 0.0, 1.0]]))
    a1, a2 = 1 - math.exp(-0.5), 1 - math.exp(-1.0)
    w1, w2 = a1, (1 - a1) * a2
    torch.testing.assert_close(out.opacity, torch.tensor([w1 + w2]))
    torch.testing.assert_close(out.rgb, torch.tensor([[w1, w2, 1 - w1 - w2]]))
    torch.testing.assert_close(out.depth, torch.tensor([(w1 * 1 + w2 * 3) / (w1 + w2)]))
    # depth files: +inf below half opacity
    out.opacity = torch.tensor([0.4])
    assert math.isinf(float(depth_for_files(out)[0]))


def test_ray_box_and_camera_rays():
    o = torch.tensor([[0.0, 0.0, 5.0], [0.0, 3.0, 5.0], [0.0, 0.0, 0.0]])
    d = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
    tn, tf = ray_box(o, d, torch.full((3,), -1.0), torch.full((3,), 1.0))
    torch.testing.assert_close(tn[[0, 2]], torch.tensor([4.0, 0.0]))
    torch.testing.assert_close(tf[[0, 2]], torch.tensor([6.0, 1.0]))
    assert tf[1] <= tn[1]
    # identity camera: the centre pixel of a 3x3 image with cx = cy = 1.5 looks down -Z; corners are symmetric
    o, d = camera_rays(torch.eye(4), (1.0, 1.0, 1.5, 1.5), (3, 3))
    torch.testing.assert_close(d[4], torch.tensor([0.0, 0.0, -1.0]))
    torch.testing.assert_close(d[0], torch.tensor([-1.0, 1.0, -1.0]) / math.sqrt(3))    # top-left: -x, +y
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(9))


def test_sh_basis_orthonormal_on_the_sphere():
    g = torch.Generator().manual_seed(0)
    d = torch.randn(200000, 3, generator=g, dtype=torch.float64)
    d = d / d.norm(dim=-1, keepdim=True)
    y = sh_basis(d, 2)
    gram = 4 * math.pi * (y.t() @ y) / d.shape[0]        # Monte-Carlo integral of Y_i Y_j over the sphere
    torch.testing.assert_close(gram, torch.eye(9, dtype=torch.float64), atol=0.03, rtol=0)


def test_field_upsample_keeps_values_and_occupancy_prunes():
    cfg = FieldConfig(aabb=[[-1, -1, -1], [1, 1, 1]], resolution=[6, 5, 4], density_rank=2, app_rank=2)
    f = TensoRF(cfg, generator=torch.Generator().manual_seed(0))
    p = torch.rand(50, 3, generator=torch.Generator().manual_seed(1)) * 1.8 - 0.9
    d = torch.nn.functional.normalize(torch.randn(50, 3, generator=torch.Generator().manual_seed(2)), dim=-1)
    s0, c0 = f.density(p), f.colour(p, d)
    f.upsample([11, 9, 7])    # (n - 1) doubles: the old grid points are kept exactly, linear in between
    assert list(f.density_planes[0].shape) == [1, 2, 9, 11]
    torch.testing.assert_close(f.density(p), s0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(f.colour(p, d), c0, rtol=1e-5, atol=1e-6)
    with torch.no_grad():                 # f = 3 components x rank 2 x (-2 * 1) = -12: sigma = 25 softplus(-17)
        for q in f.density_planes:
            q.fill_(-2.0)
        for q in f.density_lines:
            q.fill_(1.0)
    assert f.update_occupancy(0.01) == 0.0
    assert not f.occupied(p).any()


def test_edit_scores_hand_computed():
    """score_view on a 2x2 image: one object pixel (mask) that moved to the target colour, one wrong pixel outside."""
    import numpy as np

    from idsedit.scene.evaluate import ViewTruth, mean_ci, score_view

    src = np.zeros((2, 2, 3))
    trg = src.copy()
    trg[0, 0] = [0.0, 0.0, 1.0]                       # the object: black -> blue
    mask = np.array([[True, False], [False, False]])
    gt_depth = np.array([[2.0, np.inf], [3.0, np.inf]])
    rgb = trg.copy()
    rgb[1, 1] = [0.1, 0.0, 0.0]                       # an error outside the object
    depth = np.array([[2.5, np.inf], [3.0, 4.0]])
    opacity = np.array([[1.0, 0.0], [1.0, 1.0]])
    s = score_view(rgb, depth, opacity, ViewTruth(src, trg, mask, gt_depth))
    assert s["edit_success"] == 1.0
    assert s["psnr_outside"] == pytest.approx(-10 * math.log10(0.01 / 9))     # 1 wrong value in 3 pixels x 3
    assert s["psnr_to_target"] == pytest.approx(-10 * math.log10(0.01 / 12))
    assert s["depth_abs_err"] == pytest.approx(0.25)                           # (0.5 + 0) / 2
    assert s["surface_iou"] == pytest.approx(2 / 3)
    mu, hw = mean_ci([1.0, 2.0, 3.0])
    assert mu == 2.0 and hw == pytest.approx(1.96 / math.sqrt(3))


def test_two_level_sampling_keeps_exactly_the_occupied_samples():
    """The coarse segment test (blocks of 4^3 fine cells, dilated by one block) is conservative: the samples
    sample_rays keeps are exactly those of a brute-force march (every t_k, kept when its fine cell is occupied)."""
    from idsedit.scene.render import sample_rays

    cfg = FieldConfig(aabb=[[-1.0, -0.5, -1.0], [1.0, 0.5, 1.0]], resolution=[24, 12, 24],
                      occupancy_resolution=[24, 12, 24], density_rank=1, app_rank=1)
    f = TensoRF(cfg, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        f.occupancy.zero_()
        for i, j, k in ((3, 5, 20), (12, 2, 11), (13, 2, 11), (22, 9, 1)):  # scattered cells, one pair
            f.occupancy[i, j, k] = True
    o = torch.randn(3000, 3, generator=g) * 0.6 + torch.tensor([0.0, 2.0, 0.0])
    d = torch.nn.functional.normalize(torch.randn(3000, 3, generator=g) * 0.4 + torch.tensor([0.0, -1.0, 0.0]),
                                      dim=-1)
    jitter = torch.rand(3000, generator=g)
    step = 0.013
    ray, slot, tk, pts = sample_rays(f, o, d, step, jitter)
    assert ray.numel() > 30 and f.coarse_occupancy()[0].float().mean() < 0.9       # the test is not vacuous
    t_near, t_far = ray_box(o, d, f.lo, f.hi)
    k = torch.arange(400, dtype=torch.float32)
    t_all = t_near[:, None] + (k[None, :] + jitter[:, None]) * step                  # (R, K) every sample
    inside = t_all < t_far[:, None]
    p_all = o[:, None] + t_all[..., None] * d[:, None]
    keep = inside & f.occupied(p_all.view(-1, 3)).view(3000, 400)
    want_ray, want_k = keep.nonzero(as_tuple=True)
    assert torch.equal(ray, want_ray)
    torch.testing.assert_close(tk, t_all[want_ray, want_k])
    counts = torch.bincount(want_ray, minlength=3000)
    assert torch.equal(slot, torch.arange(want_ray.numel()) - (torch.cumsum(counts, 0) - counts)[want_ray])


def test_occupancy_update_with_candidates():
    """Cells outside the candidates are not evaluated (empty unless next to an occupied candidate); with every
    cell a candidate it equals the full update."""
    cfg = FieldConfig(aabb=[[-1, -1, -1], [1, 1, 1]], resolution=[8, 8, 8], occupancy_resolution=[8, 8, 8],
                      density_rank=1, app_rank=1)
    f = TensoRF(cfg)
    with torch.no_grad():                  # sigma large everywhere: every evaluated cell is occupied
        for q in f.density_planes:
            q.fill_(3.0)
        for q in f.density_lines:
            q.fill_(3.0)
    cand = torch.zeros(8, 8, 8, dtype=torch.bool)
    cand[2, 3, 4] = True
    frac = f.update_occupancy(0.01, candidates=cand)
    want = torch.zeros(8, 8, 8, dtype=torch.bool)
    want[1:4, 2:5, 3:6] = True                                       # the candidate, dilated by one cell
    assert torch.equal(f.occupancy, want) and frac == pytest.approx(27 / 512)
    full_a = f.update_occupancy(0.01, generator=torch.Generator().manual_seed(0))
    occ_a = f.occupancy.clone()
    full_b = f.update_occupancy(0.01, generator=torch.Generator().manual_seed(0),
                                candidates=torch.ones(8, 8, 8, dtype=torch.bool))
    assert full_a == full_b == 1.0 and torch.equal(occ_a, f.occupancy)


def test_distortion_loss_matches_the_double_sum():
    """O(K) prefix-sum form == sum_ij w_i w_j |t_i - t_j| + step/3 sum_i w_i^2 (float64), padding ignored."""
    from idsedit.scene.render import distortion_loss

    g = torch.Generator().manual_seed(0)
    w = torch.rand(3, 5, generator=g, dtype=torch.float64)
    t = torch.sort(torch.rand(3, 5, generator=g, dtype=torch.float64) * 4, 1).values
    w[2, 3:], t[2, 3:] = 0.0, 0.0                          # a ray with two padded slots
    brute = torch.stack([sum(w[r, i] * w[r, j] * abs(t[r, i] - t[r, j]) for i in range(5) for j in range(5))
                         + (w[r] ** 2).sum() * 0.1 / 3 for r in range(3)]).mean()
    torch.testing.assert_close(distortion_loss(w, t, 0.1), brute)
    # one sample carrying all the weight: only the intra-interval term, step / 3
    one = torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(distortion_loss(one, torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64), 0.3),
                               torch.tensor(0.1, dtype=torch.float64))


def test_edit_occupancy_refresh_keeps_the_source_grid_and_grows_by_one_cell():
    """refresh = base OR dilate(alpha > thr over the cells next to occupied ones): with density everywhere, one
    occupied cell becomes its 5^3 neighbourhood (candidates 3^3, dilated once more), and the base cell stays."""
    from idsedit.scene.edit import refresh_occupancy

    cfg = FieldConfig(aabb=[[-1, -1, -1], [1, 1, 1]], resolution=[10, 10, 10], occupancy_resolution=[10, 10, 10],
                      density_rank=1, app_rank=1)
    f = TensoRF(cfg)
    with torch.no_grad():
        for q in list(f.density_planes) + list(f.density_lines):
            q.fill_(3.0)
        f.occupancy.zero_()
        f.occupancy[5, 5, 5] = True
    base = torch.zeros(10, 10, 10, dtype=torch.bool)
    base[0, 9, 0] = True
    frac = refresh_occupancy(f, base, 0.01, torch.Generator().manual_seed(0))
    want = base.clone()
    want[3:8, 3:8, 3:8] = True
    assert torch.equal(f.occupancy, want) and frac == pytest.approx(126 / 1000)
