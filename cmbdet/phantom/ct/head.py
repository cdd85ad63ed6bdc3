"""What every CT phantom family shares: the head in Hounsfield units on the MNI head grid, the pose
of the head in the scanner, sampling onto an acquisition grid, and storage as scanners write it.

The head is built from `cmbdet.anatomy.mni_maps` (1 mm head grid): grey/white matter and CSF
fractions inside the brain, a CSF rim, a skull (inner table, diploe, outer table) and scalp around
the brain envelope, the face and neck below with air sinuses and eyes, and the petrous bones of the
skull base. Tissue densities are drawn per subject around the published values (grey matter
~35-40 HU, white matter ~25-30, CSF 0-15, bone > 700, air -1000).

Frames (mm): *MNI* (the head grid), *world* (scanner RAS+ of the written file):
``world = pose.rot @ (pose.scale * mni) + pose.shift``. The acquisition grid is axis-aligned in a
frame tilted about the scanner's left-right axis (gantry tilt).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform
from scipy import ndimage

from cmbdet.anatomy import MniMaps, mni_maps
from cmbdet.phantom.geometry import rotation

#: HU range stored by scanners (int16 raw values with intercept -1024 cover -1024..3071).
HU_MIN, HU_MAX = -1024.0, 3071.0


@dataclass(frozen=True)
class TissueHU:
    """Densities (HU) of one subject's normal tissues."""

    gm: float = 38.0
    wm: float = 27.0
    csf: float = 7.0
    scalp: float = 35.0
    fat: float = -90.0
    cortical_bone: float = 1500.0
    diploe: float = 600.0
    petrous: float = 1800.0
    vitreous: float = 12.0
    soft: float = 45.0
    csf_rim_mm: float = 2.0
    skull_mm: float = 6.5


def sample_tissue_hu(rng: np.random.Generator, *, offset_hu: float = 0.0) -> TissueHU:
    """Normal densities around the published values; ``offset_hu`` shifts the soft tissues
    (a scanner's calibration offset)."""
    gm = rng.uniform(34.0, 42.0)
    return TissueHU(
        gm=gm + offset_hu,
        wm=gm - rng.uniform(7.0, 13.0) + offset_hu,
        csf=rng.uniform(2.0, 12.0) + offset_hu,
        scalp=rng.uniform(25.0, 50.0) + offset_hu,
        fat=rng.uniform(-110.0, -70.0),
        cortical_bone=rng.uniform(1100.0, 1900.0),
        diploe=rng.uniform(350.0, 800.0),
        petrous=rng.uniform(1500.0, 2200.0),
        vitreous=rng.uniform(5.0, 18.0) + offset_hu,
        soft=rng.uniform(35.0, 60.0) + offset_hu,
        csf_rim_mm=rng.uniform(1.0, 4.5),
        skull_mm=rng.uniform(5.0, 8.5),
    )


@functools.lru_cache(maxsize=1)
def _bone_geometry() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(petrous fraction, spine fraction, smooth skull-thickness modulation) on the 1 mm head grid."""
    maps = mni_maps(1)
    x, y, z = _mm_axes(maps)
    petrous = np.zeros(maps.shape, np.float32)
    for sx in (-1.0, 1.0):
        # the petrous ridge runs from the ear forwards and inwards: a chain of ellipsoids
        for t in np.linspace(0.0, 1.0, 5):
            cx, cy, cz = sx * (48.0 - 26.0 * t), -36.0 + 22.0 * t, -40.0 + 6.0 * t
            rr = ((x - cx) / 7.0) ** 2 + ((y - cy) / 6.0) ** 2 + ((z - cz) / 5.0) ** 2
            np.maximum(petrous, np.clip((1.0 - np.sqrt(rr)) * 5.0 + 0.5, 0.0, 1.0), out=petrous)
        # greater wing of the sphenoid / anterior clinoid
        rr = ((x - sx * 24.0) / 12.0) ** 2 + ((y - 12.0) / 3.0) ** 2 + ((z + 24.0) / 4.0) ** 2
        np.maximum(petrous, 0.6 * np.clip((1.0 - np.sqrt(rr)) * 4.0 + 0.5, 0.0, 1.0), out=petrous)
    petrous *= ~maps.brain
    spine = (np.sqrt((x / 9.0) ** 2 + ((y + 22.0) / 9.0) ** 2) <= 1.0) & (z < -78.0)
    thick = 1.0 + 0.25 * np.clip(-(z - 10.0) / 60.0, 0.0, 1.0) + 0.15 * np.clip(-(y + 60.0) / 40.0, 0.0, 1.0)
    return petrous, spine.astype(np.float32), thick.astype(np.float32)


def _mm_axes(maps: MniMaps) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Broadcastable MNI mm coordinates (X,1,1), (1,Y,1), (1,1,Z) of the head grid."""
    a = maps.affine
    n = maps.shape
    return (a[0, 3] + a[0, 0] * np.arange(n[0]))[:, None, None].astype(np.float32), \
        (a[1, 3] + a[1, 1] * np.arange(n[1]))[None, :, None].astype(np.float32), \
        (a[2, 3] + a[2, 2] * np.arange(n[2]))[None, None, :].astype(np.float32)


def head_hu(t: TissueHU) -> np.ndarray:
    """(X, Y, Z) float32 HU of a normal head on the 1 mm MNI head grid (no lesions, no mimics)."""
    maps = mni_maps(1)
    petrous, spine, thick = _bone_geometry()
    d = maps.d_env
    inside_env = d <= 0.0
    hu = np.full(maps.shape, -1000.0, np.float32)
    # brain: tissue mixture; sulci and ventricles are CSF
    brain = maps.gm * t.gm + maps.wm * t.wm + maps.csf * t.csf
    hu = np.where(maps.brain, brain, hu)
    hu = np.where(inside_env & ~maps.brain, t.csf, hu)
    # layers outside the envelope: CSF rim, inner table, diploe, outer table, scalp (soft tissue + fat)
    rim = t.csf_rim_mm
    skull = t.skull_mm * thick
    table = np.minimum(1.8, skull / 3.0)
    layer_csf = (d > 0) & (d <= rim)
    layer_inner = (d > rim) & (d <= rim + table)
    layer_diploe = (d > rim + table) & (d <= rim + skull - table)
    layer_outer = (d > rim + skull - table) & (d <= rim + skull)
    layer_scalp = (d > rim + skull) & (d <= rim + skull + 5.5)
    layer_fat = (d > rim + skull + 1.5) & (d <= rim + skull + 3.5)
    hu = np.where(layer_csf, t.csf, hu)
    hu = np.where(layer_inner | layer_outer, t.cortical_bone, hu)
    hu = np.where(layer_diploe, t.diploe, hu)
    hu = np.where(layer_scalp, t.scalp, hu)
    hu = np.where(layer_fat, t.fat, hu)
    # face and neck below the cranium, with air sinuses, eyes, spine and the petrous bones
    lower = maps.lower_head
    face = (d > rim + skull) & (lower > 0.0)
    hu = np.where(face, lower * t.soft + (1.0 - lower) * hu, hu)
    air = maps.air * (d > rim + table + 0.5)  # sinuses never break the inner table
    hu = np.where(air > 0.0, air * -1000.0 + (1.0 - air) * hu, hu)
    hu = np.where(maps.eyes > 0.0, maps.eyes * t.vitreous + (1.0 - maps.eyes) * hu, hu)
    hu = np.where(spine > 0.0, t.diploe + 300.0, hu)
    hu = petrous * t.petrous + (1.0 - petrous) * hu
    # basal cisterns hold CSF
    hu = np.where((maps.cistern > 0.5) & (d > 0) & (d <= rim + 4.0), t.csf, hu)
    return hu.astype(np.float32)


# --- pose, acquisition grid, sampling -----------------------------------------------------------


@dataclass(frozen=True)
class Pose:
    """Head in the scanner: ``world = rot @ (scale * mni) + shift`` (mm)."""

    rot: np.ndarray
    scale: float
    shift: np.ndarray

    def mni_to_world(self, mni: np.ndarray) -> np.ndarray:
        return (np.atleast_2d(mni) * self.scale) @ self.rot.T + self.shift

    def world_to_mni(self, world: np.ndarray) -> np.ndarray:
        return ((np.atleast_2d(world) - self.shift) @ self.rot) / self.scale

    @property
    def gravity_mni(self) -> np.ndarray:
        """Unit vector in MNI of the direction blood cells settle (posterior in the scanner: supine)."""
        g = self.rot.T @ np.array([0.0, -1.0, 0.0])
        return g / np.linalg.norm(g)


def sample_pose(rng: np.random.Generator, *, max_pitch_deg: float = 12.0, max_roll_deg: float = 5.0) -> Pose:
    rot = (rotation((1, 0, 0), rng.uniform(-max_pitch_deg, max_pitch_deg))
           @ rotation((0, 1, 0), rng.uniform(-max_roll_deg, max_roll_deg))
           @ rotation((0, 0, 1), rng.uniform(-max_roll_deg, max_roll_deg)))
    return Pose(rot=rot, scale=float(rng.uniform(0.92, 1.08)), shift=rng.normal(0.0, [4.0, 8.0, 10.0]))


@dataclass(frozen=True)
class CTGrid:
    """An acquisition grid: canonical (R, A, S-ordered) axes tilted by ``tilt_deg`` about x.

    ``spacing_mm`` (3,) canonical, ``shape`` (3,), ``slice_thickness_mm`` (the reconstructed slice
    profile; thick slices average the head over it), ``axcodes`` of the stored file.
    """

    spacing_mm: np.ndarray
    shape: tuple[int, int, int]
    origin: np.ndarray
    tilt_deg: float
    slice_thickness_mm: float
    axcodes: tuple[str, str, str]

    @property
    def rot(self) -> np.ndarray:
        return rotation((1, 0, 0), self.tilt_deg)

    @property
    def affine(self) -> np.ndarray:
        """(4, 4) canonical voxel -> world mm."""
        aff = np.eye(4)
        aff[:3, :3] = self.rot * self.spacing_mm[None, :]
        aff[:3, 3] = self.origin
        return aff


def make_grid(rng: np.random.Generator, pose: Pose, *, inplane_mm: float, slice_mm: float,
              thickness_mm: float, tilt_deg: float, axcodes: tuple[str, str, str],
              fov_mm: tuple[float, float, float] = (200.0, 230.0, 200.0)) -> CTGrid:
    """A grid covering the head (the MNI box from skull base to vertex, about the pose)."""
    spacing = np.array([inplane_mm, inplane_mm, slice_mm], float)
    shape = tuple(int(np.ceil(f / s)) for f, s in zip(fov_mm, spacing, strict=True))
    rot = rotation((1, 0, 0), tilt_deg)
    centre_world = pose.mni_to_world(np.array([0.0, -18.0, 2.0]))[0] + rng.normal(0.0, 3.0, 3)
    half = (np.array(shape) - 1) / 2.0 * spacing
    origin = centre_world - rot @ half
    return CTGrid(spacing, shape, origin, float(tilt_deg), float(thickness_mm), axcodes)


def _grid_to_head_voxels(grid: CTGrid, pose: Pose) -> np.ndarray:
    """(4, 4) acquisition-grid voxel index -> 1 mm head-grid voxel index."""
    world_to_mni = np.eye(4)
    world_to_mni[:3, :3] = pose.rot.T / pose.scale
    world_to_mni[:3, 3] = -pose.rot.T @ pose.shift / pose.scale
    return np.linalg.inv(mni_maps(1).affine) @ world_to_mni @ grid.affine


def _points(matrix: np.ndarray, shape: tuple[int, int], ks: np.ndarray) -> np.ndarray:
    """(3, I*J*len(ks)) float32: ``matrix`` applied to the grid points (i, j, k in ks)."""
    m = matrix.astype(np.float32)
    i = np.arange(shape[0], dtype=np.float32)[:, None, None]
    j = np.arange(shape[1], dtype=np.float32)[None, :, None]
    k = np.asarray(ks, dtype=np.float32)[None, None, :]
    return np.stack([(m[r, 0] * i + m[r, 1] * j + m[r, 2] * k + m[r, 3]).reshape(-1) for r in range(3)])


def sample_on_grid(fields: list[np.ndarray], grid: CTGrid, pose: Pose, *, orders: list[int],
                   n_sub: int = 1, chunk: int = 8) -> list[np.ndarray]:
    """Sample MNI head-grid fields onto the acquisition grid (canonical order).

    Each output voxel averages ``n_sub`` points spread over the slice thickness along the slice
    axis (the slice profile: partial volume on thick slices). ``orders``: 1 linear, 0 nearest
    (nearest takes the centre point only). Returns arrays of ``grid.shape`` float32.
    """
    matrix = _grid_to_head_voxels(grid, pose)
    out = [np.zeros(grid.shape, np.float32) for _ in fields]
    offsets = (np.linspace(-0.5, 0.5, n_sub + 2)[1:-1] if n_sub > 1 else np.zeros(1)) * grid.slice_thickness_mm
    offsets_k = offsets / grid.spacing_mm[2]
    centre = len(offsets_k) // 2
    for k0 in range(0, grid.shape[2], chunk):
        ks = np.arange(k0, min(k0 + chunk, grid.shape[2]))
        shape = (grid.shape[0], grid.shape[1], len(ks))
        acc = [np.zeros(shape, np.float32) for _ in fields]
        for n_off, dk in enumerate(offsets_k):
            vox = _points(matrix, grid.shape[:2], ks + dk)
            for f, (field, order) in enumerate(zip(fields, orders, strict=True)):
                if order == 0 and n_off != centre:
                    continue
                values = ndimage.map_coordinates(field, vox, order=order, mode="nearest", prefilter=False)
                if order == 0:
                    acc[f] = values.reshape(shape).astype(np.float32)
                else:
                    acc[f] += values.reshape(shape) / len(offsets_k)
        for f in range(len(fields)):
            out[f][:, :, ks] = acc[f]
    return out


def grid_mni(grid: CTGrid, pose: Pose) -> np.ndarray:
    """(X, Y, Z, 3) float32 MNI mm of the grid's voxel centres."""
    matrix = np.linalg.inv(np.linalg.inv(mni_maps(1).affine)) @ _grid_to_head_voxels(grid, pose)
    pts = _points(matrix, grid.shape[:2], np.arange(grid.shape[2]))
    return np.moveaxis(pts.reshape(3, *grid.shape), 0, -1)


# --- storage ------------------------------------------------------------------------------------


def stored_image(hu: np.ndarray, grid: CTGrid, *, intercept: float, slope: float = 1.0) -> nib.Nifti1Image:
    """HU on the canonical grid -> an int16 NIfTI with ``scl_slope``/``scl_inter`` (as dcm2niix
    writes CT) in the grid's axis order. ``raw = round((HU - intercept) / slope)``."""
    clipped = np.clip(hu, HU_MIN, HU_MAX)
    raw = np.rint((clipped - intercept) / slope)
    raw = np.clip(raw, -32768, 32767).astype(np.int16)
    return oriented_image(raw, grid, slope=slope, intercept=intercept)


def oriented_image(data: np.ndarray, grid: CTGrid, *, slope: float = 1.0, intercept: float = 0.0) -> nib.Nifti1Image:
    """Canonical-grid array -> NIfTI in the grid's stored axis order (sform = qform)."""
    img = nib.Nifti1Image(data, grid.affine)
    xf = ornt_transform(io_orientation(grid.affine), axcodes2ornt(grid.axcodes))
    img = img.as_reoriented(xf)
    out = nib.Nifti1Image(np.ascontiguousarray(np.asanyarray(img.dataobj)), img.affine)
    out.header.set_xyzt_units("mm")
    out.set_sform(img.affine, code=1)
    out.set_qform(img.affine, code=1)
    out.header.set_slope_inter(slope, intercept)  # kept on save: data and header dtype are both integer
    return out


def random_axcodes(rng: np.random.Generator) -> tuple[str, str, str]:
    """Axial storage orders seen in practice (dcm2niix LPS/RAS flips, an occasional permutation)."""
    choices = [("L", "P", "S"), ("R", "A", "S"), ("L", "A", "S"), ("R", "P", "I"), ("L", "P", "I"),
               ("P", "L", "S"), ("A", "R", "S")]
    return choices[int(rng.integers(len(choices)))]
