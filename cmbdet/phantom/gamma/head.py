"""Head model of the gamma phantom family: MNI152 templates, a padded head
box, deep-nucleus ellipsoids, air cavities and a per-subject smooth warp.

Everything here is written independently of the other phantom families.
Coordinates are MNI mm (RAS+) unless a name says ``world`` (scanner RAS mm).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

#: The templates stop at MNI z = -72 mm; the head box is padded below (edge copy).
PAD_BELOW_MM = 24

#: Iron-rich grey nuclei (gamma's own outline): name -> (centre |x|, y, z), semi-axes (mm),
#: extra R2* at 3 T (1/s, low, high). x is mirrored for the left/right pair.
NUCLEI: dict[str, tuple[tuple[float, float, float], tuple[float, float, float], tuple[float, float]]] = {
    "globus_pallidus": ((19.5, -3.0, -1.5), (4.0, 8.0, 4.5), (28.0, 50.0)),
    "putamen": ((25.0, 3.0, 1.5), (5.0, 13.5, 8.0), (9.0, 22.0)),
    "caudate": ((13.0, 12.5, 9.5), (4.5, 8.0, 7.0), (4.0, 12.0)),
    "thalamus": ((11.0, -18.0, 6.5), (7.0, 11.5, 7.0), (1.0, 6.0)),
    "substantia_nigra": ((10.0, -19.5, -12.5), (3.5, 6.0, 3.0), (22.0, 40.0)),
    "red_nucleus": ((5.0, -20.5, -8.5), (3.0, 3.5, 3.5), (18.0, 35.0)),
    "dentate": ((15.0, -56.5, -34.0), (5.5, 7.5, 5.0), (15.0, 35.0)),
}

#: Air cavities next to the brain (centre, radius mm): dropout sources.
AIR_CAVITIES: dict[str, tuple[tuple[float, float, float], float]] = {
    "frontal_sinus": ((0.0, 70.0, -6.0), 9.0),
    "ethmoid_cells": ((0.0, 38.0, -36.0), 9.0),
    "sphenoid_sinus": ((0.0, 12.0, -40.0), 9.5),
    "mastoid_left": ((-47.0, -36.0, -42.0), 9.0),
    "mastoid_right": ((47.0, -36.0, -42.0), 9.0),
}


@dataclass(frozen=True)
class HeadMaps:
    """MNI-space maps on one grid (shape ``(nx, ny, nz)``, ``step`` mm voxels).

    ``gm``/``wm``/``csf`` are tissue fractions (float32, 0–1, csf only inside
    ``brain``), ``d_in``/``d_out`` distances (mm) inside/outside the brain mask,
    ``air_g`` the summed air-cavity gradient proxy ``sum a^3 / r^4`` (1/mm),
    ``air`` a bool mask of cavity interiors, ``grad_in`` (3, ...) the unit
    gradient of the smoothed depth (points into the brain; only for step 2),
    ``vent_seeds``/``surf_seeds`` MNI mm points on the ventricle wall and
    brain surface.
    """

    step: int
    affine: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray
    d_in: np.ndarray
    d_out: np.ndarray
    air_g: np.ndarray
    air: np.ndarray
    grad_in: np.ndarray | None
    vent_seeds: np.ndarray
    surf_seeds: np.ndarray
    shell_idx: np.ndarray  # flat indices outside the brain within 26 mm of it
    air_idx: np.ndarray  # flat indices where the air-cavity gradient matters

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.gm.shape  # type: ignore[return-value]

    def to_vox(self, mni: np.ndarray) -> np.ndarray:
        """MNI mm ``(N, 3)`` -> voxel coordinates ``(3, N)``."""
        inv = np.linalg.inv(self.affine)
        return (np.asarray(mni, float) @ inv[:3, :3].T + inv[:3, 3]).T

    def sample(self, arr: np.ndarray, mni: np.ndarray, order: int = 1, cval: float = 0.0) -> np.ndarray:
        """Interpolate ``arr`` at MNI mm points ``(N, 3)`` -> ``(N,)``."""
        return ndi.map_coordinates(arr, self.to_vox(mni), order=order, mode="constant", cval=cval)

    def axes_mm(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """1-D MNI mm coordinates along each grid axis."""
        return tuple(self.affine[a, a] * np.arange(n) + self.affine[a, 3] for a, n in enumerate(self.shape))  # type: ignore[return-value]


def _load_templates() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from nilearn import datasets  # packaged templates, no download

    gm_img = datasets.load_mni152_gm_template(resolution=1)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=1).dataobj, np.float32)
    mask = np.asarray(datasets.load_mni152_brain_mask(resolution=1).dataobj) > 0
    gm = np.asarray(gm_img.dataobj, np.float32)
    c = np.ascontiguousarray
    return c(gm), c(wm), c(mask), np.asarray(gm_img.affine, float)


@functools.lru_cache(maxsize=2)
def head_maps(step: int = 1) -> HeadMaps:
    """Build (once per process) the MNI head maps at ``step`` mm (1 or 2)."""
    gm, wm, mask, aff = _load_templates()
    # close the interhemispheric gaps of the packaged mask so the skull stays outside the brain
    mask = ndi.binary_fill_holes(ndi.binary_closing(mask, np.ones((5, 5, 5), bool), iterations=1))
    pad = ((0, 0), (0, 0), (PAD_BELOW_MM, 0))
    gm = np.pad(gm, pad, mode="edge")
    wm = np.pad(wm, pad, mode="edge")
    mask = np.pad(mask, pad, mode="edge")
    aff = aff.copy()
    aff[2, 3] -= PAD_BELOW_MM
    if step > 1:
        gm = ndi.uniform_filter(gm, step)[::step, ::step, ::step]
        wm = ndi.uniform_filter(wm, step)[::step, ::step, ::step]
        mask = ndi.uniform_filter(mask.astype(np.float32), step)[::step, ::step, ::step] > 0.5
        aff[:3, :3] *= step
    gm, wm, mask = (np.ascontiguousarray(a) for a in (gm, wm, mask))
    tissue = np.clip(gm + wm, 0.0, 1.0)
    csf = np.where(mask, 1.0 - tissue, 0.0).astype(np.float32)
    d_in = ndi.distance_transform_edt(mask, sampling=step).astype(np.float32)
    d_out = ndi.distance_transform_edt(~mask, sampling=step).astype(np.float32)
    x, y, z = (aff[a, a] * np.arange(n) + aff[a, 3] for a, n in enumerate(gm.shape))
    air_g = np.zeros(gm.shape, np.float32)
    air = np.zeros(gm.shape, bool)
    for (cx, cy, cz), a in AIR_CAVITIES.values():
        r2 = (x[:, None, None] - cx) ** 2 + (y[None, :, None] - cy) ** 2 + (z[None, None, :] - cz) ** 2
        r2 = np.maximum(r2, a * a).astype(np.float32)
        air_g += (a**3) / (r2 * r2)
        air |= r2 <= a * a + 1e-3
    air &= ~mask
    grad = None
    vent_seeds = surf_seeds = np.zeros((0, 3))
    if step > 1:
        depth = ndi.gaussian_filter(d_in, 1.0)
        grad = np.stack(np.gradient(depth, step)).astype(np.float32)
        grad /= np.maximum(np.linalg.norm(grad, axis=0), 1e-6)
        xx, yy, zz = np.meshgrid(x, y, z, indexing="ij")
        vent = (csf > 0.55) & (d_in > 14) & (np.abs(xx) < 32) & (yy > -50) & (yy < 30) & (zz > -5) & (zz < 36)
        wall = ndi.binary_dilation(vent) & ~vent & (wm > 0.5)
        vent_seeds = np.stack([xx[wall], yy[wall], zz[wall]], 1)
        surf = mask & (d_in > 0.5) & (d_in <= 3.0) & (zz > -40)
        surf_seeds = np.stack([xx[surf], yy[surf], zz[surf]], 1)
    shell_idx = np.flatnonzero((d_out > 0) & (d_out < 26.0))
    air_idx = np.flatnonzero(air_g > 1e-4)
    return HeadMaps(
        step, aff, gm, wm, csf, mask, d_in, d_out, air_g, air, grad, vent_seeds, surf_seeds, shell_idx, air_idx
    )


def nucleus_list() -> list[tuple[str, np.ndarray, np.ndarray, tuple[float, float]]]:
    """Bilateral nuclei as ``(name_side, centre_mni, semi_axes, dR2star_3T range)``."""
    out = []
    for name, ((cx, cy, cz), axes, r2) in NUCLEI.items():
        for side, sx in (("left", -1.0), ("right", 1.0)):
            out.append((f"{name}_{side}", np.array([sx * cx, cy, cz]), np.array(axes), r2))
    return out


# ---------------------------------------------------------------------------
# per-subject warp


@dataclass(frozen=True)
class SubjectWarp:
    """MNI mm -> scanner world mm: ``world = lin @ (mni + u(mni)) + shift``.

    ``u`` is a smooth displacement (3, gx, gy, gz) on a lattice with origin
    ``u_origin`` (MNI mm) and spacing ``u_spacing`` mm (trilinear between).
    """

    lin: np.ndarray
    shift: np.ndarray
    u: np.ndarray
    u_origin: np.ndarray
    u_spacing: float

    def displacement(self, mni: np.ndarray) -> np.ndarray:
        """``u`` at MNI points ``(N, 3)`` -> ``(N, 3)`` mm."""
        c = ((np.asarray(mni, float) - self.u_origin) / self.u_spacing).T
        return np.stack([ndi.map_coordinates(self.u[a], c, order=1, mode="nearest") for a in range(3)], 1)

    def to_world(self, mni: np.ndarray) -> np.ndarray:
        mni = np.atleast_2d(np.asarray(mni, float))
        return (mni + self.displacement(mni)) @ self.lin.T + self.shift

    def to_mni(self, world: np.ndarray, n_iter: int = 8) -> np.ndarray:
        """Inverse by fixed-point iteration (the displacement is smooth and small)."""
        world = np.atleast_2d(np.asarray(world, float))
        y = (world - self.shift) @ np.linalg.inv(self.lin).T
        m = y.copy()
        for _ in range(n_iter):
            m = y - self.displacement(m)
        return m

    def direction_to_world(self, d_mni: np.ndarray) -> np.ndarray:
        """Rotate/scale direction vectors (ignores the small warp Jacobian)."""
        v = np.asarray(d_mni, float) @ self.lin.T
        return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-9)


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """Rotation matrix from angles (radians) about x, then y, then z."""
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def sample_warp(rng: np.random.Generator) -> tuple[SubjectWarp, float]:
    """Random subject warp and atrophy level (0–0.35, tissue fraction lost to CSF)."""
    spacing = 10.0
    origin = np.array([-120.0, -160.0, -120.0])
    shape = (25, 29, 26)
    amp = rng.uniform(1.0, 3.5)
    u = rng.standard_normal((3, *shape))
    u = np.stack([ndi.gaussian_filter(c, 1.6) for c in u])
    u *= amp / max(float(u.std()), 1e-6)
    # ventricle/central widening (atrophy): push tissue away from the ventricles
    atrophy = float(rng.uniform(0.0, 0.35))
    g = [origin[a] + spacing * np.arange(shape[a]) for a in range(3)]
    cx, cy, cz = np.meshgrid(g[0], g[1] - (-14.0), g[2] - 12.0, indexing="ij")
    w = np.exp(-(cx**2 + cy**2 + cz**2) / (2 * 26.0**2))
    e = 0.55 * atrophy
    u[0] += e * cx * w
    u[1] += e * cy * w
    u[2] += e * cz * w
    ang = np.deg2rad(rng.normal(0.0, [5.0, 3.0, 4.0]))
    scale = rng.uniform(0.92, 1.08) * rng.uniform(0.96, 1.04, 3)
    lin = _rotation(*ang) @ np.diag(scale)
    shift = rng.normal(0.0, 5.0, 3) + np.array([0.0, rng.uniform(-25, 10), rng.uniform(-10, 30)])
    return SubjectWarp(lin, shift, u.astype(np.float32), origin, spacing), atrophy
