"""Subject geometry: acquisition grid, head pose and the deformation to MNI.

Frames (all mm):
* world: scanner RAS+ of the written file (B0 along world z).
* grid:  the canonical acquisition grid ("R, A, S"-ordered axes of the oblique
  grid); a point's grid-mm coordinates are ``R_obl.T @ (world - origin)`` and
  its continuous voxel index is grid-mm / spacing.
* MNI:   template space; ``mni = A @ (world - centre) + u(world)`` with A a
  random rotation (+-8 deg) and scaling (0.9-1.1) and u a smooth random
  displacement (cubic B-spline on ~25 mm nodes laid on the grid).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .protocol import Protocol


def rotation(axis: np.ndarray | tuple[float, float, float], deg: float) -> np.ndarray:
    """3x3 rotation matrix (Rodrigues)."""
    a = np.asarray(axis, float)
    a = a / max(np.linalg.norm(a), 1e-12)
    t = np.deg2rad(deg)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * (k @ k)


def bspline_weights(pos: np.ndarray, n_nodes: int, step: float) -> np.ndarray:
    """(len(pos), n_nodes) cubic B-spline weights; node a sits at (a - 1) * step."""
    t = np.asarray(pos, float)[:, None] / step + 1.0 - np.arange(n_nodes)[None, :]
    at = np.abs(t)
    w = np.where(at < 1, (4 - 6 * at**2 + 3 * at**3) / 6, np.where(at < 2, (2 - at) ** 3 / 6, 0.0))
    return w.astype(np.float32)


def tensor_field(coef: np.ndarray, w0: np.ndarray, w1: np.ndarray, w2: np.ndarray) -> np.ndarray:
    """Evaluate a tensor-product spline (coef (a, b, c)) on a full grid -> (n0, n1, n2) float32."""
    t = np.tensordot(w0, coef.astype(np.float32), axes=([1], [0]))  # (n0, b, c)
    t = np.tensordot(t, w1, axes=([1], [1]))  # (n0, c, n1)
    t = np.tensordot(t, w2, axes=([1], [1]))  # (n0, n1, n2)
    return t


@dataclass
class SubjectGeometry:
    """Everything needed to go between world, grid and MNI for one subject."""

    spacing: np.ndarray  # (3,) canonical grid spacing (mm)
    shape: np.ndarray  # (3,) canonical grid shape
    rot: np.ndarray  # (3, 3) grid axes in world (columns), i.e. R_obl
    origin: np.ndarray  # (3,) world position of voxel (0, 0, 0)
    A: np.ndarray  # (3, 3) world -> MNI linear part
    centre: np.ndarray  # (3,) world position of MNI origin (before displacement)
    disp_coef: np.ndarray  # (3, a, b, c) displacement spline coefficients (mm)
    disp_step: np.ndarray  # (3,) node spacing in voxel units per canonical axis

    @property
    def affine(self) -> np.ndarray:
        """4x4 canonical-grid affine (voxel -> world)."""
        aff = np.eye(4)
        aff[:3, :3] = self.rot * self.spacing[None, :]
        aff[:3, 3] = self.origin
        return aff

    # -- coordinate maps ----------------------------------------------------
    def world_to_index(self, w: np.ndarray) -> np.ndarray:
        return ((np.atleast_2d(w) - self.origin) @ self.rot) / self.spacing

    def index_to_world(self, ijk: np.ndarray) -> np.ndarray:
        return (np.atleast_2d(ijk) * self.spacing) @ self.rot.T + self.origin

    def world_to_gridmm(self, w: np.ndarray) -> np.ndarray:
        return (np.atleast_2d(w) - self.origin) @ self.rot

    def displacement_at_index(self, ijk: np.ndarray) -> np.ndarray:
        """(N, 3) displacement (mm) at continuous canonical voxel indices (N, 3)."""
        ijk = np.atleast_2d(ijk)
        _, na, nb, nc = self.disp_coef.shape
        wa = bspline_weights(ijk[:, 0], na, self.disp_step[0])
        wb = bspline_weights(ijk[:, 1], nb, self.disp_step[1])
        wc = bspline_weights(ijk[:, 2], nc, self.disp_step[2])
        out = np.empty((len(ijk), 3))
        for s0 in range(0, len(ijk), 4096):
            sl = slice(s0, s0 + 4096)
            w = (wa[sl, :, None] * wb[sl, None, :]).reshape(-1, na * nb, 1) * wc[sl, None, :]
            out[sl] = w.reshape(len(w), -1) @ self.disp_coef.reshape(3, -1).T
        return out

    def world_to_mni(self, w: np.ndarray) -> np.ndarray:
        w = np.atleast_2d(np.asarray(w, float))
        return (w - self.centre) @ self.A.T + self.displacement_at_index(self.world_to_index(w))

    def mni_to_world(self, m: np.ndarray, iters: int = 8) -> np.ndarray:
        """Inverse of :meth:`world_to_mni` by fixed-point iteration."""
        m = np.atleast_2d(np.asarray(m, float))
        ainv = np.linalg.inv(self.A)
        w = self.centre + m @ ainv.T
        for _ in range(iters):
            u = self.displacement_at_index(self.world_to_index(w))
            w = self.centre + (m - u) @ ainv.T
        return w

    def displacement_on_grid(self, pos0: np.ndarray, pos1: np.ndarray, pos2: np.ndarray) -> np.ndarray:
        """(3, n0, n1, n2) displacement at the tensor grid of index positions.

        Evaluated exactly every ~4 mm in-plane and linearly interpolated in
        between (the field varies on a 25 mm scale).
        """
        _, na, nb, nc = self.disp_coef.shape
        sub = []
        for pos, sp in ((pos0, self.spacing[0]), (pos1, self.spacing[1])):
            pos = np.asarray(pos, float)
            step = max(1, int(4.0 / max(sp * (pos[1] - pos[0]) if len(pos) > 1 else sp, 1e-6)))
            idx = np.unique(np.r_[np.arange(0, len(pos), step), len(pos) - 1])
            sub.append((pos, idx))
        w0 = bspline_weights(sub[0][0][sub[0][1]], na, self.disp_step[0])
        w1 = bspline_weights(sub[1][0][sub[1][1]], nb, self.disp_step[1])
        w2 = bspline_weights(pos2, nc, self.disp_step[2])
        out = []
        for d in range(3):
            f = tensor_field(self.disp_coef[d], w0, w1, w2)
            for axis, (pos, idx) in enumerate(sub):
                if len(idx) != len(pos):
                    f = _interp_to(f, idx, axis, len(pos))
            out.append(f)
        return np.stack(out)


def _interp_to(f: np.ndarray, idx: np.ndarray, axis: int, n: int) -> np.ndarray:
    """Linear interpolation of samples taken at integer positions idx (sorted) to 0..n-1."""
    full = np.arange(n)
    j = np.clip(np.searchsorted(idx, full, side="right") - 1, 0, len(idx) - 2)
    w = ((full - idx[j]) / (idx[j + 1] - idx[j])).astype(np.float32)
    shp = [1, 1, 1]
    shp[axis] = n
    w = w.reshape(shp)
    return np.take(f, j, axis=axis) * (1 - w) + np.take(f, j + 1, axis=axis) * w


def make_geometry(rng: np.random.Generator, protocol: Protocol, *, disp_mm: float | None = None) -> SubjectGeometry:
    """Random head pose/size/shape and an acquisition grid covering the head."""
    spacing, shape = protocol.canonical()
    rot = rotation(protocol.oblique_axis, protocol.oblique_deg)
    # subject head: rotation +-8 deg, scale 0.9-1.1 (global x per-axis)
    g = rng.uniform(0.92, 1.08)
    scale = g * rng.uniform(0.96, 1.04, size=3)
    scale = np.clip(scale, 0.9, 1.1)
    r_head = rotation((1, 0, 0), rng.uniform(-8, 8)) @ rotation((0, 1, 0), rng.uniform(-8, 8))
    r_head = r_head @ rotation((0, 0, 1), rng.uniform(-8, 8))
    A = r_head @ np.diag(1.0 / scale)  # world -> MNI
    centre = np.array([rng.normal(0, 6), rng.normal(12, 12), rng.normal(25, 15)])
    ainv = np.linalg.inv(A)
    # slab: top at coverage_top (MNI z), centred on the head in-plane
    extent = spacing * (shape - 1)
    top = protocol.coverage_top_mm
    m_centre = np.array([rng.normal(0, 3), rng.normal(-14, 4), 0.0])
    # slab axis in world is rot[:, 2]; choose centre so the top edge sits at 'top'
    w_top = centre + ainv @ np.array([m_centre[0], m_centre[1], top])
    w_mid = w_top - rot[:, 2] * extent[2] / 2
    origin = w_mid - rot @ (extent / 2)
    # smooth displacement: nodes every ~25 mm on the grid
    amp = rng.uniform(2.5, 5.5) if disp_mm is None else disp_mm
    step_mm = 25.0
    disp_step = step_mm / spacing
    n_nodes = np.ceil(shape / disp_step).astype(int) + 3
    coef = rng.normal(0.0, amp, size=(3, *n_nodes)).astype(np.float32)
    return SubjectGeometry(
        spacing=spacing,
        shape=shape,
        rot=rot,
        origin=origin,
        A=A,
        centre=centre,
        disp_coef=coef,
        disp_step=disp_step,
    )
