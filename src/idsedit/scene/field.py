"""The radiance field: a TensoRF-style vector-matrix (VM) factorised grid, a background model, an occupancy grid.

Notation (TensoRF, Chen et al. 2022, eq. 4-5). A point p in the box [lo, hi] is normalised to x in [-1, 1]^3.
For the three axis pairs (a, b) with the remaining axis c, the density feature is

    f_sigma(x) = sum_m sum_r  P^sigma_{m,r}(x_a, x_b) * v^sigma_{m,r}(x_c)        (bilinear planes, linear lines)
    sigma(x)   = SIGMA_SCALE * softplus(f_sigma(x) + shift)      (1 / world units; shift = -10, TensoRF's)

and the appearance features are ``A(x) = concat_m [P^c_{m}(x_a, x_b) * v^c_{m}(x_c)]`` (3 R_c values), mapped by
a linear basis B (3 R_c -> 3 (L+1)^2) to spherical-harmonics coefficients of degree L per colour channel:

    rgb(x, d) = sigmoid( sum_k  Y_k(d) * (B A(x))_{c,k} )                           (view-dependent colour)

All lookups are ``torch.nn.functional.grid_sample`` (align_corners=True), so the field runs on any device with no
custom extension. Rays that leave the field see the background model: a learned equirectangular environment map
of the ray direction (``background="learned"``) or a constant colour (``"white"``, ``"black"``, or r,g,b).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..errors import IdseditError

MAT_MODES = ((0, 1), (0, 2), (1, 2))   # plane axes (a, b) ...
VEC_MODES = (2, 1, 0)                   # ... and the line axis c of each of the three components
DENSITY_SHIFT = -10.0                   # TensoRF's: softplus(f - 10) * 25 ~ 1e-3 at f = 0, the field starts empty
SIGMA_SCALE = 25.0                      # TensoRF's distance_scale
COARSE_FACTOR = 4                       # fine occupancy cells per coarse cell edge (segment skipping)


@dataclass
class FieldConfig:
    """Shape of a :class:`TensoRF` field (stored in scene.json; every number is needed to rebuild it)."""

    aabb: list                           # [[x0, y0, z0], [x1, y1, z1]] world box of the field
    resolution: list                     # [nx, ny, nz] grid cells per axis
    density_rank: int = 16               # R_sigma per component
    app_rank: int = 24                   # R_c per component
    sh_degree: int = 2                   # L: view dependence (0 = Lambertian)
    background: str = "learned"          # learned | white | black | "r,g,b"
    env_size: tuple = (16, 32)           # (H, W) of the learned environment map (elevation x azimuth)
    occupancy_resolution: list = field(default_factory=list)  # [nx, ny, nz]; default resolution / 2
    density_shift: float = DENSITY_SHIFT  # an empty start; a fog start (e.g. -5) lets the field paint views
                                          # with haze instead of forming surfaces (measured: floaters everywhere)

    def __post_init__(self):
        lo, hi = torch.tensor(self.aabb[0], dtype=torch.float64), torch.tensor(self.aabb[1], dtype=torch.float64)
        if lo.shape != (3,) or hi.shape != (3,) or not bool(torch.isfinite(lo).all() and torch.isfinite(hi).all()) \
                or not bool((hi > lo).all()):
            raise IdseditError(f"bad scene box {self.aabb!r}: need [[x0, y0, z0], [x1, y1, z1]] with x1 > x0 etc.")
        self.aabb = [[float(v) for v in self.aabb[0]], [float(v) for v in self.aabb[1]]]
        self.resolution = [int(v) for v in self.resolution]
        if not self.occupancy_resolution:
            self.occupancy_resolution = [max(2, v // 2) for v in self.resolution]
        self.env_size = tuple(int(v) for v in self.env_size)
        background_colour(self.background)   # validates

    @classmethod
    def for_box(cls, aabb, n_voxels: int, **kw) -> "FieldConfig":
        """Cells per axis proportional to the box's extent, about ``n_voxels`` in total (cubic cells)."""
        ext = [h - l for l, h in zip(aabb[0], aabb[1])]
        voxel = (ext[0] * ext[1] * ext[2] / n_voxels) ** (1 / 3)
        return cls(aabb=aabb, resolution=[max(4, round(e / voxel)) for e in ext], **kw)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["env_size"] = list(self.env_size)
        return d

    @property
    def voxel_size(self) -> float:
        """Mean cell edge (world units)."""
        return sum((h - l) / (n - 1) for l, h, n in zip(self.aabb[0], self.aabb[1], self.resolution)) / 3


def background_colour(spec: str) -> tuple[float, float, float] | None:
    """(r, g, b) in [0, 1] for a constant background, None for ``learned``."""
    s = str(spec).strip().lower()
    if s == "learned":
        return None
    named = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}
    if s in named:
        return named[s]
    try:
        rgb = tuple(float(v) for v in s.split(","))
    except ValueError:
        rgb = ()
    if len(rgb) != 3 or not all(0.0 <= v <= 1.0 for v in rgb):
        raise IdseditError(f"background {spec!r}: use learned, white, black or r,g,b with values in [0, 1]")
    return rgb


# --------------------------------------------------------------------------------------------------- SH
def sh_basis(d: Tensor, degree: int) -> Tensor:
    """Real spherical harmonics Y_k(d) up to ``degree`` (<= 2) of unit directions d (N, 3) -> (N, (L+1)^2)."""
    x, y, z = d.unbind(-1)
    out = [torch.full_like(x, 0.28209479177387814)]
    if degree >= 1:
        c1 = 0.4886025119029199
        out += [-c1 * y, c1 * z, -c1 * x]
    if degree >= 2:
        out += [1.0925484305920792 * x * y, -1.0925484305920792 * y * z,
                0.31539156525252005 * (2 * z * z - x * x - y * y), -1.0925484305920792 * x * z,
                0.5462742152960396 * (x * x - y * y)]
    if degree > 2:
        raise IdseditError(f"sh_degree must be 0, 1 or 2, got {degree}")
    return torch.stack(out, -1)


def lookup_grid(grid: Tensor, lo: Tensor, cell: Tensor, points: Tensor) -> Tensor:
    """grid[cell index of each point] for a boolean grid (nx, ny, nz) of cells ``cell`` (3,) from ``lo``; False
    for points outside the grid."""
    n = grid.shape
    u = (points - lo) / cell                                              # (N, 3) in cell units
    inside = ((u >= 0) & (u <= torch.tensor(n, dtype=u.dtype))).all(-1)
    ix = u[:, 0].long().clamp_(0, n[0] - 1)
    iy = u[:, 1].long().clamp_(0, n[1] - 1)
    iz = u[:, 2].long().clamp_(0, n[2] - 1)
    return inside & grid.reshape(-1)[(ix * n[1] + iy) * n[2] + iz]


# --------------------------------------------------------------------------------------------------- field
class TensoRF(nn.Module):
    """VM-factorised density and appearance grids + background; see the module docstring for the equations.

    ``density(points)`` -> sigma (N,) and ``colour(points, dirs)`` -> rgb (N, 3) take world points (N, 3).
    """

    def __init__(self, config: FieldConfig, *, init_scale: float = 0.1, generator: torch.Generator | None = None):
        super().__init__()
        self.config = config
        self.register_buffer("lo", torch.tensor(config.aabb[0], dtype=torch.float32))
        self.register_buffer("hi", torch.tensor(config.aabb[1], dtype=torch.float32))
        res = config.resolution

        def planes(rank):
            return nn.ParameterList([nn.Parameter(init_scale * torch.randn(1, rank, res[b], res[a], generator=generator))
                                     for a, b in MAT_MODES])

        def lines(rank):
            return nn.ParameterList([nn.Parameter(init_scale * torch.randn(1, rank, res[c], 1, generator=generator))
                                     for c in VEC_MODES])

        self.density_planes, self.density_lines = planes(config.density_rank), lines(config.density_rank)
        self.app_planes, self.app_lines = planes(config.app_rank), lines(config.app_rank)
        n_sh = (config.sh_degree + 1) ** 2
        self.basis = nn.Linear(3 * config.app_rank, 3 * n_sh, bias=False)
        with torch.no_grad():
            self.basis.weight.copy_(torch.randn(self.basis.weight.shape, generator=generator)
                                    / math.sqrt(3 * config.app_rank))
        bg = background_colour(config.background)
        self.env = nn.Parameter(torch.zeros(1, 3, *config.env_size)) if bg is None else None
        self.register_buffer("bg_const", torch.tensor(bg if bg is not None else (0.0, 0.0, 0.0)))
        self.register_buffer("occupancy", torch.ones(config.occupancy_resolution, dtype=torch.bool))

    # ------------------------------------------------------------------------------------------- helpers
    def normalise(self, p: Tensor) -> Tensor:
        """World points -> [-1, 1]^3 box coordinates."""
        return (p - self.lo) / (self.hi - self.lo) * 2 - 1

    @staticmethod
    def _vm(x: Tensor, planes, lines) -> list[Tensor]:
        """Per component m: plane_m(x_a, x_b) * line_m(x_c), each (R, N)."""
        out = []
        for (a, b), c, plane, line in zip(MAT_MODES, VEC_MODES, planes, lines):
            gp = x[:, (a, b)].view(1, -1, 1, 2)                                        # (1, N, 1, 2)
            gl = torch.stack([torch.zeros_like(x[:, c]), x[:, c]], -1).view(1, -1, 1, 2)
            fp = F.grid_sample(plane, gp, mode="bilinear", align_corners=True)[0, :, :, 0]   # (R, N)
            fl = F.grid_sample(line, gl, mode="bilinear", align_corners=True)[0, :, :, 0]
            out.append(fp * fl)
        return out

    # ------------------------------------------------------------------------------------------- queries
    def density(self, points: Tensor) -> Tensor:
        """sigma(p) >= 0 for world points (N, 3) -> (N,), per world unit of distance."""
        x = self.normalise(points)
        f = sum(t.sum(0) for t in self._vm(x, self.density_planes, self.density_lines))
        return SIGMA_SCALE * F.softplus(f + self.config.density_shift)

    def colour(self, points: Tensor, dirs: Tensor) -> Tensor:
        """rgb(p, d) in (0, 1) for world points (N, 3) and unit view directions (N, 3) -> (N, 3)."""
        x = self.normalise(points)
        feat = torch.cat(self._vm(x, self.app_planes, self.app_lines), 0).t()     # (N, 3 R_c)
        coef = self.basis(feat).view(-1, 3, (self.config.sh_degree + 1) ** 2)       # (N, 3, K)
        return torch.sigmoid((coef * sh_basis(dirs, self.config.sh_degree)[:, None, :]).sum(-1))

    def background(self, dirs: Tensor) -> Tensor:
        """Colour seen by rays that leave the field, (N, 3) unit directions -> (N, 3)."""
        if self.env is None:
            return self.bg_const.expand(dirs.shape[0], 3)
        el = torch.asin(dirs[:, 1].clamp(-1, 1)) / (math.pi / 2)                  # [-1, 1], +1 = straight up
        az = torch.atan2(dirs[:, 0], dirs[:, 2]) / math.pi                          # [-1, 1]
        g = torch.stack([az, -el], -1).view(1, -1, 1, 2)
        return torch.sigmoid(F.grid_sample(self.env, g, mode="bilinear", padding_mode="border",
                                           align_corners=True)[0, :, :, 0].t())

    @torch.no_grad()
    def upsample(self, resolution) -> None:
        """Resample every plane and line to ``resolution`` [nx, ny, nz] (bilinear/linear, align_corners=True,
        so the field's values are unchanged up to interpolation); the optimiser must be rebuilt afterwards."""
        res = [int(v) for v in resolution]
        for planes, lines in ((self.density_planes, self.density_lines), (self.app_planes, self.app_lines)):
            for m, ((a, b), c) in enumerate(zip(MAT_MODES, VEC_MODES)):
                planes[m] = nn.Parameter(F.interpolate(planes[m].data, size=(res[b], res[a]), mode="bilinear",
                                                       align_corners=True))
                lines[m] = nn.Parameter(F.interpolate(lines[m].data, size=(res[c], 1), mode="bilinear",
                                                      align_corners=True))
        self.config.resolution = res

    def tv(self, which: str = "density") -> Tensor:
        """Total variation of the grids: the mean squared difference of neighbouring cells of every plane (both
        axes) and line, summed over components."""
        planes, lines = (self.density_planes, self.density_lines) if which == "density" else \
            (self.app_planes, self.app_lines)
        out = 0.0
        for p in planes:
            out = out + (p[:, :, 1:] - p[:, :, :-1]).pow(2).mean() + (p[..., 1:] - p[..., :-1]).pow(2).mean()
        for v in lines:
            out = out + (v[:, :, 1:] - v[:, :, :-1]).pow(2).mean()
        return out

    def l1_density(self) -> Tensor:
        """Mean |value| of the density planes and lines (TensoRF's sparsity term), summed over components."""
        return sum(p.abs().mean() for p in self.density_planes) + sum(v.abs().mean() for v in self.density_lines)

    # ------------------------------------------------------------------------------------------- occupancy
    def occupied(self, points: Tensor) -> Tensor:
        """Whether each world point (N, 3) lies in an occupied cell of the occupancy grid (False outside)."""
        size = (self.hi - self.lo) / torch.tensor(self.occupancy.shape, dtype=torch.float32)
        return lookup_grid(self.occupancy, self.lo, size, points)

    def cell_size(self) -> float:
        """The smallest edge of an occupancy cell (world units)."""
        return float(((self.hi - self.lo) / torch.tensor(self.occupancy.shape, dtype=torch.float32)).min())

    def coarse_occupancy(self, factor: int = COARSE_FACTOR) -> tuple[Tensor, float]:
        """A conservative coarse copy of the occupancy grid for skipping whole segments of a ray: cells of
        ``factor``^3 fine cells, occupied when any of their fine cells is, then dilated by one coarse cell (so a
        segment no longer than a coarse cell, tested at its midpoint, keeps every sample that may be occupied).
        Returns (grid, its smallest cell edge); cached until the occupancy grid changes (tensor version)."""
        key = (self.occupancy._version, self.occupancy.data_ptr(), factor)
        cache = getattr(self, "_coarse_cache", None)
        if cache is None or cache[0] != key:
            occ = self.occupancy[None, None].float()
            if factor > 1:
                occ = F.max_pool3d(occ, factor, stride=factor, ceil_mode=True)
            occ = F.max_pool3d(occ, 3, stride=1, padding=1)[0, 0] > 0
            size = (self.hi - self.lo) / torch.tensor(self.occupancy.shape, dtype=torch.float32) * factor
            self._coarse_cache = cache = (key, occ, float(size.min()), size)
        return cache[1], cache[2]

    def occupied_coarse(self, points: Tensor, factor: int = COARSE_FACTOR) -> Tensor:
        """Whether each world point lies in an occupied cell of :meth:`coarse_occupancy` (False outside)."""
        grid, _ = self.coarse_occupancy(factor)
        return lookup_grid(grid, self.lo, self._coarse_cache[3], points)

    @torch.no_grad()
    def update_occupancy(self, step_size: float, alpha_threshold: float = 1e-3, samples_per_cell: int = 2,
                         generator: torch.Generator | None = None, chunk: int = 1 << 18,
                         candidates: Tensor | None = None) -> float:
        """Mark cells whose max alpha = 1 - exp(-sigma step) over a few points (the centre, then random points)
        exceeds the threshold, dilated by one cell; returns the occupied fraction. ``candidates`` (a boolean grid
        like the occupancy grid) limits the evaluation to those cells; the others become empty (the fit passes
        the current grid dilated by one cell: a pruned cell is revisited only once a neighbour is occupied)."""
        res = self.occupancy.shape
        idx = torch.arange(self.occupancy.numel()) if candidates is None else \
            candidates.reshape(-1).nonzero(as_tuple=True)[0]
        nyz = res[1] * res[2]
        grid = torch.stack([idx // nyz, (idx // res[2]) % res[1], idx % res[2]], -1).to(torch.float32)
        best = torch.zeros(grid.shape[0])
        size = (self.hi - self.lo) / torch.tensor(res, dtype=torch.float32)
        for s in range(samples_per_cell):
            off = torch.full((1, 3), 0.5) if s == 0 else torch.rand(grid.shape[0], 3, generator=generator)
            pts = self.lo + (grid + off) * size
            sig = torch.cat([self.density(pts[i:i + chunk]) for i in range(0, pts.shape[0], chunk)]) \
                if pts.shape[0] else torch.zeros(0)
            best = torch.maximum(best, 1 - torch.exp(-sig * step_size))
        occ = torch.zeros(self.occupancy.numel())
        occ[idx] = (best > alpha_threshold).float()
        occ = F.max_pool3d(occ.view(1, 1, *res), 3, stride=1, padding=1)[0, 0] > 0
        self.occupancy.copy_(occ)
        return float(occ.float().mean())
