"""Vectorised analytic ray caster of the shapes world (numpy, float64, one core).

Conventions
-----------
Vectors are stored as structure-of-arrays, shape (3, N): ``v[0], v[1], v[2]`` are the x, y, z rows.
A ray is ``o + t d`` with ``|d| = 1`` in world units, so ``t`` is the distance along the ray (the depth).
Each object is a unit primitive in its local frame (resting on y = 0, about 2 units tall), placed by
``world = R_y(rotation) (size * local) + (x, 0, z)``; a ray is intersected in local coordinates
``o_l = R_y(-rotation) (o - p) / size``, ``d_l = R_y(-rotation) d / size``, which keeps ``t`` unchanged.

Unit primitives (local frame):
  sphere    centre (0, 1, 0), radius 1
  cube      [-a, a] x [0, 2a] x [-a, a],                          a = CUBE_HALF
  cylinder  x^2 + z^2 <= R^2, 0 <= y <= H (capped),               R, H = CYL_RADIUS, CYL_HEIGHT
  cone      x^2 + z^2 <= (R (1 - y / H))^2, 0 <= y <= H (capped), R, H = CONE_RADIUS, CONE_HEIGHT
  torus     (sqrt(x^2 + z^2) - R)^2 + (y - r)^2 = r^2 (lying flat), R, r = TORUS_MAJOR, TORUS_MINOR
The torus is found by sphere tracing its exact distance function inside its bounding sphere and slab (a hit
is a distance below SPHERE_TRACE_TOL, which also lets grazing rays converge within SPHERE_TRACE_STEPS); the
others by closed-form quadric / slab intersections.

Shading: albedo * (AMBIENT + DIFFUSE * max(0, n.l) * lit) + SPECULAR * max(0, n.h)^SHININESS * lit, where
``lit`` is 0 when the shadow ray towards the light hits an object; the floor uses n = +Y; rays that hit
nothing see the background gradient. Nothing is reflected, so an object's colour affects only the pixels that
the object itself covers.

Anti-aliasing is adaptive: every pixel gets its centre ray; pixels whose (hit id, shadow) differs from a
4-neighbour get 4 more rays at (+-1/4, +-1/4) pixel and average the 5 samples. The label maps (mask, depth,
object ids) are those of the centre ray, so they are exactly consistent with each other.
"""

from __future__ import annotations

import math

import numpy as np

from .scene import COLORS, SHAPES, CameraParams, SceneParams, FLOOR_RADIUS

CUBE_HALF = 0.82
CYL_RADIUS, CYL_HEIGHT = 0.8, 1.75
CONE_RADIUS, CONE_HEIGHT = 1.05, 2.0
TORUS_MAJOR, TORUS_MINOR = 1.0, 0.42

AMBIENT, DIFFUSE, SPECULAR, SHININESS = 0.32, 0.68, 0.35, 40.0
SHADOW_OFFSET = 2e-3  # world units a shadow ray starts off the surface, along the normal (> torus tolerance)
T_MIN = 1e-9  # smallest accepted hit distance
SPHERE_TRACE_STEPS = 200  # torus: sphere-tracing iterations (enough for grazing rays to converge or exit)
SPHERE_TRACE_TOL = 3e-4  # torus: hit threshold on the distance (local units; ~1/200 pixel at 64 px)

BACKGROUND_ID, FLOOR_ID = -2, -1  # internal hit ids; objects are 0..K-1
SHAPE_INDEX = {s: i for i, s in enumerate(SHAPES)}


# ----------------------------------------------------------------------------------------------- small math
def _dot(a, b):
    """Row-wise dot product of (3, N) arrays -> (N,)."""
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _normalize(v):
    """v / |v| for a (3, N) array."""
    return v / np.sqrt(_dot(v, v))


def _nan_to_inf(t):
    return np.where(np.isnan(t), np.inf, t)


def _quadratic(a, b, c):
    """Both roots (t_lo <= t_hi) of a t^2 + 2 b t + c = 0 (half-b form, stable); +inf where no real root."""
    disc = b * b - a * c
    real = disc >= 0
    sq = np.sqrt(np.where(real, disc, 0.0))
    q = -(b + np.where(b >= 0, sq, -sq))
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = _nan_to_inf(q / a), _nan_to_inf(c / q)
    lo, hi = np.minimum(t1, t2), np.maximum(t1, t2)
    return np.where(real, lo, np.inf), np.where(real, hi, np.inf)


def _first(cands, t_min):
    """Nearest valid candidate: cands = [(t, valid)], returns (t, index) with (inf, -1) where none is valid."""
    best = np.full(cands[0][0].shape, np.inf)
    which = np.full(cands[0][0].shape, -1, dtype=np.int64)
    for i, (t, ok) in enumerate(cands):
        better = ok & (t > t_min) & (t < best)
        best = np.where(better, t, best)
        which = np.where(better, i, which)
    return best, which


# ----------------------------------------------------------------------------- unit primitives, local frame
def _hit_sphere(o, d, t_min, need_normal):
    """Unit sphere at (0, 1, 0): |o + t d - c|^2 = 1."""
    oc = (o[0], o[1] - 1.0, o[2])
    lo, hi = _quadratic(_dot(d, d), _dot(oc, d), _dot(oc, oc) - 1.0)
    t, _ = _first([(lo, lo < np.inf), (hi, hi < np.inf)], t_min)
    if not need_normal:
        return t, None
    return t, np.stack([oc[0] + t * d[0], oc[1] + t * d[1], oc[2] + t * d[2]])


def _hit_cube(o, d, t_min, need_normal):
    """Slab test against [-a, a] x [0, 2a] x [-a, a]; the normal is the axis of the entered (or exited) face."""
    a = CUBE_HALF
    lo_b, hi_b = (-a, 0.0, -a), (a, 2 * a, a)
    t_near = np.full(o[0].shape, -np.inf)
    t_far = np.full(o[0].shape, np.inf)
    axis_near = np.zeros(o[0].shape, dtype=np.int64)
    axis_far = np.zeros(o[0].shape, dtype=np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        for k in range(3):
            inv = 1.0 / d[k]
            t1, t2 = (lo_b[k] - o[k]) * inv, (hi_b[k] - o[k]) * inv
            tn, tf = np.nan_to_num(np.minimum(t1, t2), nan=-np.inf), np.nan_to_num(np.maximum(t1, t2), nan=np.inf)
            axis_near = np.where(tn > t_near, k, axis_near)
            axis_far = np.where(tf < t_far, k, axis_far)
            t_near, t_far = np.maximum(t_near, tn), np.minimum(t_far, tf)
    valid = t_far >= t_near
    use_near = t_near > t_min
    t = np.where(valid & use_near, t_near, np.where(valid & (t_far > t_min), t_far, np.inf))
    if not need_normal:
        return t, None
    axis = np.where(use_near, axis_near, axis_far)
    n = np.zeros((3,) + o[0].shape)
    for k in range(3):
        sign = np.where(use_near, -np.sign(d[k]), np.sign(d[k]))
        n[k] = np.where(axis == k, sign, 0.0)
    return t, n


def _hit_cylinder(o, d, t_min, need_normal):
    """Capped cylinder x^2 + z^2 <= R^2, 0 <= y <= H: side quadric plus two cap planes."""
    R, H = CYL_RADIUS, CYL_HEIGHT
    lo, hi = _quadratic(d[0] ** 2 + d[2] ** 2, o[0] * d[0] + o[2] * d[2], o[0] ** 2 + o[2] ** 2 - R * R)
    cands = []
    for ts in (lo, hi):
        y = o[1] + ts * d[1]
        cands.append((ts, (ts < np.inf) & (y >= 0) & (y <= H)))
    with np.errstate(divide="ignore", invalid="ignore"):
        for yc in (0.0, H):
            tc = _nan_to_inf((yc - o[1]) / d[1])
            xc, zc = o[0] + tc * d[0], o[2] + tc * d[2]
            cands.append((tc, np.isfinite(tc) & (xc * xc + zc * zc <= R * R)))
    t, which = _first(cands, t_min)
    if not need_normal:
        return t, None
    tt = np.where(np.isfinite(t), t, 0.0)
    side = which <= 1
    n = np.stack([np.where(side, o[0] + tt * d[0], 0.0),
                  np.where(side, 0.0, np.where(which == 2, -1.0, 1.0)),
                  np.where(side, o[2] + tt * d[2], 0.0)])
    return t, n


def _hit_cone(o, d, t_min, need_normal):
    """Cone x^2 + z^2 = k^2 (H - y)^2, k = R / H, 0 <= y <= H (apex up), plus its base disc at y = 0."""
    R, H = CONE_RADIUS, CONE_HEIGHT
    k2 = (R / H) ** 2
    hy = H - o[1]  # H - y at t = 0; H - y(t) = hy - t d_y
    a = d[0] ** 2 + d[2] ** 2 - k2 * d[1] ** 2
    b = o[0] * d[0] + o[2] * d[2] + k2 * hy * d[1]
    c = o[0] ** 2 + o[2] ** 2 - k2 * hy * hy
    lo, hi = _quadratic(a, b, c)
    cands = []
    for ts in (lo, hi):
        y = o[1] + ts * d[1]
        cands.append((ts, np.isfinite(ts) & (y >= 0) & (y <= H)))
    with np.errstate(divide="ignore", invalid="ignore"):
        tc = _nan_to_inf(-o[1] / d[1])
    xc, zc = o[0] + tc * d[0], o[2] + tc * d[2]
    cands.append((tc, np.isfinite(tc) & (xc * xc + zc * zc <= R * R)))
    t, which = _first(cands, t_min)
    if not need_normal:
        return t, None
    tt = np.where(np.isfinite(t), t, 0.0)
    side = which <= 1
    # gradient of x^2 + z^2 - k^2 (H - y)^2 (up to a factor 2)
    n = np.stack([np.where(side, o[0] + tt * d[0], 0.0),
                  np.where(side, k2 * (hy - tt * d[1]), -1.0),
                  np.where(side, o[2] + tt * d[2], 0.0)])
    return t, n


def _torus_sdf(px, py, pz):
    """Exact signed distance to the flat torus: |(sqrt(x^2 + z^2) - R, y - r)| - r (local units)."""
    q = np.sqrt(px * px + pz * pz) - TORUS_MAJOR
    return np.sqrt(q * q + (py - TORUS_MINOR) ** 2) - TORUS_MINOR


def _hit_torus(o, d, t_min, need_normal):
    """Sphere tracing of the torus SDF from the entry into its bounding sphere (centre (0, r, 0), radius R + r)."""
    R, r = TORUS_MAJOR, TORUS_MINOR
    n_rays = o[0].shape[0]
    oc = (o[0], o[1] - r, o[2])
    dd = _dot(d, d)
    lo, hi = _quadratic(dd, _dot(oc, d), _dot(oc, oc) - (R + r + 1e-3) ** 2)
    # clip the ray to the bounding sphere AND the slab 0 <= y <= 2r that holds the flat torus
    with np.errstate(divide="ignore", invalid="ignore"):
        y0, y1 = -o[1] / d[1], (2 * r - o[1]) / d[1]
    slab_in = np.nan_to_num(np.minimum(y0, y1), nan=-np.inf)
    slab_out = np.nan_to_num(np.maximum(y0, y1), nan=np.inf)
    inside_slab = (o[1] >= 0) & (o[1] <= 2 * r)  # d_y == 0: the slab is all or nothing
    slab_in = np.where(d[1] == 0, np.where(inside_slab, -np.inf, np.inf), slab_in)
    slab_out = np.where(d[1] == 0, np.where(inside_slab, np.inf, -np.inf), slab_out)
    t_start = np.maximum(np.maximum(lo, slab_in), t_min)
    t_end = np.minimum(hi, slab_out)
    t_out = np.full(n_rays, np.inf)
    idx = np.nonzero(np.isfinite(hi) & (t_end > t_start))[0]
    inv_len = 1.0 / np.sqrt(dd[idx])
    t = t_start[idx]
    t_exit = t_end[idx] + 1e-9
    ox, oy, oz, dx, dy, dz = (v[idx] for v in (*o, *d))
    active = np.ones(idx.size, dtype=bool)
    for it in range(SPHERE_TRACE_STEPS):
        if idx.size == 0:
            break
        dist = _torus_sdf(ox + t * dx, oy + t * dy, oz + t * dz)
        hit = active & (dist < SPHERE_TRACE_TOL)
        t_out[idx[hit]] = t[hit]
        t = np.where(active, t + dist * inv_len, t)
        active &= ~hit & (t < t_exit)
        if it % 6 == 5:  # drop finished rays now and then (cheaper than compacting every step)
            keep = np.nonzero(active)[0]
            idx, t, t_exit, inv_len, active = idx[keep], t[keep], t_exit[keep], inv_len[keep], active[keep]
            ox, oy, oz, dx, dy, dz = ox[keep], oy[keep], oz[keep], dx[keep], dy[keep], dz[keep]
    if not need_normal:
        return t_out, None
    tt = np.where(np.isfinite(t_out), t_out, 0.0)
    px, py, pz = o[0] + tt * d[0], o[1] + tt * d[1], o[2] + tt * d[2]
    rho = np.maximum(np.sqrt(px * px + pz * pz), 1e-12)
    return t_out, np.stack([px - R * px / rho, py - r, pz - R * pz / rho])


# bounding sphere of each unit primitive, by shape index: centre (0, cy, 0), radius rb (slightly inflated);
# index -1 (empty slot) maps to the last entry, a sphere that nothing can hit
_CONE_CY = (CONE_HEIGHT ** 2 - CONE_RADIUS ** 2) / (2 * CONE_HEIGHT)
_BOUNDS = {"sphere": (1.0, 1.0), "cube": (CUBE_HALF, CUBE_HALF * math.sqrt(3.0)),
           "cylinder": (CYL_HEIGHT / 2, math.hypot(CYL_RADIUS, CYL_HEIGHT / 2)),
           "cone": (_CONE_CY, CONE_HEIGHT - _CONE_CY), "torus": (TORUS_MINOR, TORUS_MAJOR + TORUS_MINOR)}
_BOUND_CY = np.array([_BOUNDS[s][0] for s in SHAPES] + [-1e9])
_BOUND_R = np.array([_BOUNDS[s][1] * (1 + 1e-6) + 1e-9 for s in SHAPES] + [0.0])

_HIT = {"sphere": _hit_sphere, "cube": _hit_cube, "cylinder": _hit_cylinder, "cone": _hit_cone,
        "torus": _hit_torus}


# ------------------------------------------------------------------------------------------- scene tables
class SceneTable:
    """The objects of B scenes as arrays: shape index (B, K) (-1 = empty slot), position (B, K, 3),
    size (B, K), cos/sin of rotation (B, K), albedo (B, K, 3); plus per-scene light (B, 3), floor (B, 3),
    background (B, 3). sin/cos are computed per object with ``math`` so results do not depend on B."""

    def __init__(self, scenes: list[SceneParams]):
        B = len(scenes)
        K = max(len(s.objects) for s in scenes)
        self.shape = np.full((B, K), -1, dtype=np.int64)
        self.pos = np.zeros((B, K, 3))
        self.size = np.ones((B, K))
        self.cos = np.ones((B, K))
        self.sin = np.zeros((B, K))
        self.albedo = np.zeros((B, K, 3))
        self.light = np.zeros((B, 3))
        self.floor = np.zeros((B, 3))
        self.background = np.zeros((B, 3))
        for b, s in enumerate(scenes):
            for k, ob in enumerate(s.objects):
                self.shape[b, k] = SHAPE_INDEX[ob.shape]
                self.pos[b, k] = (ob.position[0], 0.0, ob.position[1])
                self.size[b, k] = ob.size
                self.cos[b, k], self.sin[b, k] = math.cos(ob.rotation), math.sin(ob.rotation)
                self.albedo[b, k] = COLORS[ob.color]
            norm = math.sqrt(sum(v * v for v in s.light))
            self.light[b] = [v / norm for v in s.light]
            self.floor[b] = COLORS[s.floor_color]
            self.background[b] = COLORS[s.background]
        self.n_slots = K


def _to_local(o, d, pos, size, c, s):
    """World rays -> object frame: R_y(-theta) (o - p) / size and R_y(-theta) d / size (inputs per ray)."""
    ox, oy, oz = (o[0] - pos[:, 0]) / size, (o[1] - pos[:, 1]) / size, (o[2] - pos[:, 2]) / size
    dx, dy, dz = d[0] / size, d[1] / size, d[2] / size
    # R_y(theta) maps (x, z) -> (c x + s z, -s x + c z); its inverse is (c x - s z, s x + c z)
    return (np.stack([c * ox - s * oz, oy, s * ox + c * oz]), np.stack([c * dx - s * dz, dy, s * dx + c * dz]))


def _to_world_normal(n, c, s):
    """Local normal -> world: R_y(theta) n, normalised (uniform scale does not change normals)."""
    return _normalize(np.stack([c * n[0] + s * n[2], n[1], -s * n[0] + c * n[2]]))


def trace_objects(o, d, img, table: SceneTable, t_min=T_MIN, need_normal=True):
    """Nearest object hit of each ray. o, d: (3, N) world rays (|d| = 1); img: (N,) scene index of each ray.

    Returns t (N,) distance (+inf = no object), slot (N,) object index (-1 = none), n (3, N) world normal
    (zeros where no hit; None when need_normal is False).
    """
    N = o.shape[1]
    t_best = np.full(N, np.inf)
    slot = np.full(N, -1, dtype=np.int64)
    n_best = np.zeros((3, N)) if need_normal else None
    for k in range(table.n_slots):
        code = table.shape[:, k][img]
        # 1. cull with each object's world bounding sphere (centre p + (0, cy s, 0), radius rb s)
        size = table.size[:, k][img]
        cy, rb = _BOUND_CY[code] * size, _BOUND_R[code] * size
        ocx, ocy, ocz = o[0] - table.pos[:, k, 0][img], o[1] - cy, o[2] - table.pos[:, k, 2][img]
        b = ocx * d[0] + ocy * d[1] + ocz * d[2]
        c = ocx * ocx + ocy * ocy + ocz * ocz - rb * rb
        disc = b * b - c
        near = (code >= 0) & (disc >= 0) & (np.sqrt(np.maximum(disc, 0.0)) - b > t_min)
        # 2. exact intersection of the surviving rays, one primitive type at a time
        for si, name in enumerate(SHAPES):
            sel = np.nonzero(near & (code == si))[0]
            if sel.size == 0:
                continue
            bi = img[sel]
            c, s = table.cos[bi, k], table.sin[bi, k]
            ol, dl = _to_local(o[:, sel], d[:, sel], table.pos[bi, k], size[sel], c, s)
            t, n = _HIT[name](ol, dl, t_min, need_normal)
            better = t < t_best[sel]
            upd = sel[better]
            t_best[upd] = t[better]
            slot[upd] = k
            if need_normal:
                n_best[:, upd] = _to_world_normal(n[:, better], c[better], s[better])
    return t_best, slot, n_best


def trace_floor(o, d):
    """Hit distance of the floor disc y = 0, |(x, z)| <= FLOOR_RADIUS, seen from above; +inf elsewhere."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(d[1] < 0, -o[1] / d[1], np.inf)
    t = _nan_to_inf(t)
    x, z = o[0] + np.where(np.isfinite(t), t, 0) * d[0], o[2] + np.where(np.isfinite(t), t, 0) * d[2]
    return np.where((t > T_MIN) & (x * x + z * z <= FLOOR_RADIUS ** 2), t, np.inf)


def background_rgb(d, bg):
    """Backdrop gradient by ray direction: bg * (0.62 + 0.38 u) + 0.18 u, u = clip(0.5 + 1.5 d_y, 0, 1).
    d: (3, N), bg: (N, 3) -> (N, 3)."""
    u = np.clip(0.5 + 1.5 * d[1], 0.0, 1.0)[:, None]
    return bg * (0.62 + 0.38 * u) + 0.18 * u


def shade_rays(o, d, img, table: SceneTable):
    """Cast, shadow and shade rays. Returns rgb (N, 3) in [0, 1], hit id (N,) (BACKGROUND_ID, FLOOR_ID or the
    object slot), depth (N,) (+inf for background) and lit (N,) bool (False where the shadow ray is blocked)."""
    N = o.shape[1]
    t_obj, slot, n_obj = trace_objects(o, d, img, table)
    t_floor = trace_floor(o, d)
    is_obj = t_obj <= t_floor
    hit_id = np.where(is_obj & np.isfinite(t_obj), slot, np.where(np.isfinite(t_floor), FLOOR_ID, BACKGROUND_ID))
    depth = np.where(is_obj, t_obj, t_floor)
    hit = hit_id != BACKGROUND_ID
    n = np.where(is_obj, n_obj, np.array([[0.0], [1.0], [0.0]]))
    # face the normal towards the viewer (cone/cylinder bases seen from below the floor never occur, but be safe)
    n = np.where(_dot(n, d) > 0, -n, n)
    light = table.light[img].T  # (3, N)
    ndl = _dot(n, light)
    lit = np.zeros(N, dtype=bool)
    cand = np.nonzero(hit & (ndl > 0))[0]
    if cand.size:
        dep = depth[cand]
        p = o[:, cand] + dep * d[:, cand] + SHADOW_OFFSET * n[:, cand]
        t_sh, _, _ = trace_objects(p, light[:, cand], img[cand], table, need_normal=False)
        lit[cand] = ~np.isfinite(t_sh)
    albedo = np.where((hit_id >= 0)[:, None], table.albedo[img, np.maximum(hit_id, 0)], table.floor[img])
    diffuse = np.where(lit, ndl, 0.0)[:, None]
    h = _normalize(light - d)
    spec = np.where(lit & is_obj, np.maximum(_dot(n, h), 0.0) ** SHININESS, 0.0)[:, None]
    rgb = albedo * (AMBIENT + DIFFUSE * diffuse) + SPECULAR * spec
    rgb = np.where(hit[:, None], rgb, background_rgb(d, table.background[img]))
    return np.clip(rgb, 0.0, 1.0), hit_id, np.where(hit, depth, np.inf), lit


# ------------------------------------------------------------------------------------------------- camera
def camera_to_world(cam: CameraParams) -> np.ndarray:
    """4x4 camera-to-world matrix, OpenGL/Blender convention: columns (right, up, back, eye); the camera looks
    down its -Z axis with +Y up."""
    eye = cam.eye()
    fwd = np.asarray(cam.target, dtype=np.float64) - eye
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, np.array([0.0, 1.0, 0.0]))
    if np.linalg.norm(right) < 1e-9:  # looking straight down/up: pick +X as right
        right = np.array([1.0, 0.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, fwd)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, up, -fwd, eye
    return m


def pixel_rays(cam: CameraParams, size: int, offsets=((0.0, 0.0),)):
    """World rays through pixel (i, j) at (j + 0.5 + dx, i + 0.5 + dy) for each (dx, dy) in offsets.

    Camera-space direction: (x, y, -1) with x = (2 (j + 0.5 + dx) / W - 1) tan(fov / 2), y = -(2 (i + 0.5 + dy)
    / H - 1) tan(fov / 2), i.e. NeRF's ((u - W/2) / f, -(v - H/2) / f, -1) with f = W / (2 tan(fov / 2)).
    Returns o (3,), d (3, H * W * len(offsets)) ordered (i, j, offset).
    """
    c2w = camera_to_world(cam)
    tan = math.tan(math.radians(cam.fov) / 2)
    ii, jj = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64), indexing="ij")
    off = np.asarray(offsets, dtype=np.float64)  # (S, 2)
    u = (jj[..., None] + 0.5 + off[:, 0]).ravel()
    v = (ii[..., None] + 0.5 + off[:, 1]).ravel()
    x = (2 * u / size - 1) * tan
    y = -(2 * v / size - 1) * tan
    r = c2w[:3, :3]
    d = _normalize(np.stack([r[k, 0] * x + r[k, 1] * y - r[k, 2] for k in range(3)]))
    return c2w[:3, 3].copy(), d
