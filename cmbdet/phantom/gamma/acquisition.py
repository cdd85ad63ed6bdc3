"""Acquisition model of the gamma family: protocol draw, oblique slice grid,
tissue pull-through with a slice profile, multi-coil noise, artefacts and
storage (axis order, dtype, scl_slope, qform/sform)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform
from scipy import ndimage as ndi

from cmbdet.phantom.gamma.head import SubjectWarp

#: stored axis orders drawn per scan (nibabel codes; all distinct conventions)
AXCODES = ("LPS", "RAS", "LAS", "RPI", "PIR", "LPI", "RAI", "ASL", "PSR", "LIP")


@dataclass(frozen=True)
class GammaProtocol:
    """One acquisition of the gamma family (units in the field names).

    ``voxel_[xyz]_mm`` follow the stored array axes (``axcodes``);
    ``in_plane_mm``/``slice_mm`` are the acquisition's read and slice sizes.
    """

    family: str
    vendor_style: str
    field_t: float
    te_ms: float
    tr_ms: float
    flip_deg: float
    contrast: str  # "swi" | "gre"
    swi_mask_power: int
    voxel_x_mm: float
    voxel_y_mm: float
    voxel_z_mm: float
    in_plane_mm: float
    slice_mm: float
    nx: int
    ny: int
    nz: int
    axcodes: str
    tilt_deg: float
    coverage: str  # "full" | "partial"
    snr: float
    n_coils: int
    g_factor_max: float
    ghosting: float
    ringing: float
    storage: str
    scl_slope: float
    qform_only: int

    def as_row(self) -> dict:
        """Flat dict of str/int/float values."""
        return {k: (float(v) if isinstance(v, np.floating) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class SliceGrid:
    """Acquisition grid: voxel (i, j, k) centre = ``origin + rot @ (i dx, j dy, k dz)``.

    ``rot`` columns are the read, phase and slice-normal directions (world).
    Objects are rendered on a fine through-slice grid with ``m`` samples per
    slice at offsets ``sub_mm`` (mm from the slice centre) weighted ``sub_w``.
    """

    origin: np.ndarray
    rot: np.ndarray
    voxel_mm: np.ndarray
    shape: tuple[int, int, int]
    sub_mm: np.ndarray
    sub_w: np.ndarray

    @property
    def affine(self) -> np.ndarray:
        a = np.eye(4)
        a[:3, :3] = self.rot * self.voxel_mm[None, :]
        a[:3, 3] = self.origin
        return a

    def to_acq_mm(self, world: np.ndarray) -> np.ndarray:
        """World mm ``(N, 3)`` -> acquisition-frame mm (voxel (i,j,k) at (i dx, j dy, k dz))."""
        return (np.atleast_2d(world) - self.origin) @ self.rot

    def in_fov(self, world: np.ndarray, margin_vox: float = 0.5) -> np.ndarray:
        ijk = self.to_acq_mm(world) / self.voxel_mm
        hi = np.array(self.shape) - 1 - margin_vox
        return np.all((ijk >= margin_vox) & (ijk <= hi), axis=1)

    @property
    def fine_z_mm(self) -> np.ndarray:
        """Through-slice positions (acq mm) of all fine samples, slice-major."""
        k = np.arange(self.shape[2]) * self.voxel_mm[2]
        return (k[:, None] + self.sub_mm[None, :]).ravel()


def sample_protocol_params(rng: np.random.Generator, tiny: bool) -> dict:
    """Scanner and sequence draw (before the grid is known)."""
    field_t = float(rng.choice([1.5, 3.0], p=[0.4, 0.6]))
    contrast = "swi" if rng.random() < 0.45 else "gre"
    te = float(rng.uniform(15.0, 40.0)) if field_t == 1.5 else float(rng.uniform(15.0, 30.0))
    if tiny:
        vox = np.array([rng.uniform(2.5, 2.8), rng.uniform(2.5, 2.8), rng.uniform(2.8, 3.0)])
        style = "tiny"
    else:
        style = str(rng.choice(["fine_thick", "clinical", "iso", "hires"], p=[0.3, 0.35, 0.15, 0.2]))
        ip = {"fine_thick": (0.45, 0.55), "clinical": (0.82, 1.0), "iso": (0.9, 1.0), "hires": (0.6, 0.75)}[style]
        dx = rng.uniform(*ip)
        dz = {
            "fine_thick": rng.uniform(2.0, 4.0),
            "clinical": rng.uniform(2.5, 4.0),
            "iso": dx * rng.uniform(1.0, 1.15),
            "hires": rng.uniform(1.2, 2.5),
        }[style]
        vox = np.array([dx, dx * rng.uniform(1.0, 1.1), dz])
    snr = float(np.exp(rng.uniform(np.log(6.0), np.log(40.0))))
    two_d = style == "clinical" or (style == "tiny" and rng.random() < 0.5)  # 2-D multi-slice GRE: long TR
    return {
        "field_t": field_t,
        "te_ms": te,
        "tr_ms": float(rng.uniform(400.0, 900.0)) if two_d else float(rng.uniform(20.0, 50.0)),
        "flip_deg": float(rng.uniform(15.0, 25.0)) if two_d else float(rng.uniform(8.0, 18.0)),
        "contrast": contrast,
        "swi_mask_power": int(rng.integers(3, 6)),
        "voxel": vox,
        "style": style,
        "snr": snr,
        "n_coils": int(rng.choice([1, 4, 8, 12, 16])),
        "g_factor_max": float(rng.uniform(1.0, 1.6)),
        "ghosting": float(rng.uniform(0.02, 0.08)) if rng.random() < 0.25 else 0.0,
        "ringing": float(rng.uniform(0.75, 0.92)) if rng.random() < 0.3 else 0.0,
        "axcodes": str(rng.choice(AXCODES)),
        "partial": bool(rng.random() < 0.3),
    }


def make_grid(
    rng: np.random.Generator, pp: dict, warp: SubjectWarp, surf_mni: np.ndarray, tiny: bool
) -> tuple[SliceGrid, float, str]:
    """Oblique axial grid around the warped brain; returns grid, tilt (deg), coverage."""
    tilt = float(min(abs(rng.normal(0.0, 9.0)), 20.0))
    psi = rng.uniform(0, 2 * np.pi)
    axis = np.array([np.cos(psi), np.sin(psi), 0.0])
    rot = _axis_angle(axis, np.deg2rad(tilt)) @ _axis_angle(np.array([0, 0, 1.0]), np.deg2rad(rng.uniform(-6, 6)))
    vox = pp["voxel"]
    surf_w = warp.to_world(surf_mni)
    proj = surf_w @ rot
    lo, hi = proj.min(0), proj.max(0)
    centre = 0.5 * (lo + hi) + rng.normal(0, 3.0, 3)
    fov = np.array([rng.uniform(190, 235), rng.uniform(215, 245)])
    if tiny:
        fov = np.minimum(np.maximum(hi[:2] - lo[:2] + 30, 150), 78 * vox[:2])
    n_ip = np.minimum(np.round(fov / vox[:2]).astype(int), 480)
    # through-slice coverage: brain bottom (cerebellum) to vertex, or a partial slab
    n_lo, n_hi = lo[2] - rng.uniform(0, 8), hi[2] + rng.uniform(0, 10)
    coverage = "full"
    if pp["partial"]:
        frac = rng.uniform(0.55, 0.85)
        span = (n_hi - n_lo) * frac
        if rng.random() < 0.5:
            n_lo = n_hi - span
        else:
            n_lo = n_lo + rng.uniform(0, n_hi - n_lo - span)
        n_hi = n_lo + span
        coverage = "partial"
    nz = int(np.ceil((n_hi - n_lo) / vox[2])) + 1
    cap = 76 if tiny else int(12.5e6 // (n_ip[0] * n_ip[1]))
    if nz > cap:
        drop = nz - cap
        n_lo += drop * vox[2] * rng.uniform(0.3, 0.7)
        nz = cap
        coverage = "partial"
    start = np.array([centre[0] - (n_ip[0] - 1) / 2 * vox[0], centre[1] - (n_ip[1] - 1) / 2 * vox[1], n_lo])
    origin = rot @ start
    m = max(1, int(np.ceil(vox[2] / 0.6)))
    width = rng.uniform(1.0, 1.2)
    sub = ((np.arange(m) + 0.5) / m - 0.5) * vox[2] * width
    w = np.exp(-((sub / (0.45 * vox[2] * width)) ** 2))
    grid = SliceGrid(origin, rot, vox.astype(float), (int(n_ip[0]), int(n_ip[1]), nz), sub, w / w.sum())
    return grid, tilt, coverage


def _axis_angle(axis: np.ndarray, ang: float) -> np.ndarray:
    a = axis / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(ang) * k + (1 - np.cos(ang)) * k @ k


# ---------------------------------------------------------------------------
# tissue pull-through: MNI map -> world box -> slices


def world_box(grid: SliceGrid, warp: SubjectWarp, spacing: float) -> tuple[np.ndarray, tuple[int, int, int]]:
    """World-aligned box (origin mm, shape) covering the scan grid and the head."""
    n = np.array(grid.shape) - 1
    corners = np.array([[a, b, c] for a in (0, n[0]) for b in (0, n[1]) for c in (0, n[2])], float)
    cw = corners * grid.voxel_mm @ grid.rot.T + grid.origin
    head = warp.to_world(np.array([[x, y, z] for x in (-95, 95) for y in (-130, 95) for z in (-96, 112)], float))
    lo = np.maximum(cw.min(0) - 2 * grid.voxel_mm.max(), head.min(0))
    hi = np.minimum(cw.max(0) + 2 * grid.voxel_mm.max(), head.max(0))
    shape = tuple(int(v) for v in np.maximum(np.ceil((hi - lo) / spacing) + 1, 2))
    return lo, shape  # type: ignore[return-value]


def upsample_linear(coarse: np.ndarray, steps: list[float], shape: tuple[int, ...]) -> np.ndarray:
    """Separable linear upsampling of a lattice sampled every ``steps[a]`` voxels (corner aligned)."""
    out = coarse.astype(np.float32)
    for ax, n in enumerate(shape):
        pos = np.arange(n, dtype=np.float32) / np.float32(steps[ax])
        i0 = np.minimum(np.floor(pos).astype(int), out.shape[ax] - 1)
        i1 = np.minimum(i0 + 1, out.shape[ax] - 1)
        f = (pos - i0).astype(np.float32)
        sh = [1] * out.ndim
        sh[ax] = n
        f = f.reshape(sh)
        out = np.take(out, i0, axis=ax) * (1 - f) + np.take(out, i1, axis=ax) * f
    return out


def pull_to_box(
    maps_affine: np.ndarray,
    arrays: list[np.ndarray],
    warp: SubjectWarp,
    box_origin: np.ndarray,
    box_shape: tuple[int, int, int],
    spacing: float,
) -> list[np.ndarray]:
    """Resample MNI-grid ``arrays`` into the world box through the subject warp.

    Coordinates = exact affine part + the warp residual, computed on a lattice
    every 4 voxels and upsampled linearly (the warp is smooth on 10 mm).
    """
    c = 4
    nc = [int(np.ceil((n - 1) / c)) + 1 for n in box_shape]
    g = np.meshgrid(*[box_origin[a] + spacing * c * np.arange(nc[a]) for a in range(3)], indexing="ij")
    world = np.stack([x.ravel() for x in g], 1)
    inv = np.linalg.inv(maps_affine)
    lin_inv = np.linalg.inv(warp.lin)
    y = (world - warp.shift) @ lin_inv.T
    resid = ((warp.to_mni(world) - y) @ inv[:3, :3].T).T.reshape(3, *nc)
    # affine part: box index -> MNI voxel
    m = inv[:3, :3] @ lin_inv * spacing
    t = inv[:3, :3] @ (lin_inv @ (box_origin - warp.shift)) + inv[:3, 3]
    idx = [np.arange(n, dtype=np.float32) for n in box_shape]
    coords = np.empty((3, *box_shape), np.float32)
    for a in range(3):
        coords[a] = upsample_linear(resid[a], [c, c, c], box_shape)
        coords[a] += (
            (m[a, 0] * idx[0])[:, None, None]
            + (m[a, 1] * idx[1])[None, :, None]
            + (m[a, 2] * idx[2] + t[a])[None, None, :]
        )
    return [ndi.map_coordinates(arr, coords, order=1, mode="constant", cval=0.0, output=np.float32) for arr in arrays]


def box_to_slices(box: np.ndarray, box_origin: np.ndarray, spacing: float, grid: SliceGrid, n_sub: int) -> np.ndarray:
    """Sample the world box on the slice grid, averaging ``n_sub`` through-slice positions."""
    mat = grid.rot * grid.voxel_mm[None, :] / spacing
    out = np.zeros(grid.shape, np.float32)
    offs = ((np.arange(n_sub) + 0.5) / n_sub - 0.5) * grid.voxel_mm[2]
    ws = np.full(n_sub, 1.0 / n_sub)
    for d, w in zip(offs, ws, strict=True):
        off = (grid.origin + grid.rot[:, 2] * d - box_origin) / spacing
        out += w * ndi.affine_transform(
            box, mat, off, output_shape=grid.shape, order=1, mode="constant", cval=0.0, output=np.float32
        )
    return out


# ---------------------------------------------------------------------------
# coils, noise, artefacts


def _coarse_to_full(coarse: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    return upsample_linear(coarse, [(s - 1) / max(c - 1, 1) for s, c in zip(shape, coarse.shape, strict=True)], shape)


def coil_fields(
    rng: np.random.Generator, grid: SliceGrid, n_coils: int, field_t: float, g_max: float
) -> tuple[np.ndarray, np.ndarray]:
    """Combined receive/transmit bias (median ~1) and noise g-factor map, full grid."""
    nc = (12, 12, max(3, min(grid.shape[2], 10)))
    ax = [np.linspace(0, (grid.shape[a] - 1) * grid.voxel_mm[a], nc[a]) for a in range(3)]
    x, y, z = np.meshgrid(*ax, indexing="ij")
    ctr = np.array([ax[0][-1] / 2, ax[1][-1] / 2, ax[2][-1] * rng.uniform(0.3, 0.7)])
    pts = np.stack([x - ctr[0], y - ctr[1], z - ctr[2]], -1)
    if n_coils == 1:
        bias = 1.0 + 0.0 * x + rng.uniform(-0.15, 0.15) * (pts[..., 1] / 100.0)
    else:
        ang = rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.arange(n_coils) / n_coils
        ring = np.stack([105 * np.cos(ang), 120 * np.sin(ang), rng.uniform(-40, 60, n_coils)], 1)
        width = rng.uniform(70, 130)
        s2 = np.zeros(x.shape)
        for p in ring:
            s2 += (1.0 / (1.0 + np.sum((pts - p) ** 2, -1) / width**2)) ** 2
        bias = np.sqrt(s2)
    r2 = np.sum(pts**2, -1)
    if field_t >= 3.0:  # dielectric centre brightening
        bias = bias * (1.0 + rng.uniform(0.1, 0.35) * np.exp(-r2 / (2 * 55.0**2)))
    bias = bias / np.median(bias)
    gmap = 1.0 + (g_max - 1.0) * np.exp(-r2 / (2 * 50.0**2))
    return _coarse_to_full(bias, grid.shape), _coarse_to_full(gmap, grid.shape)


def add_artefacts(rng: np.random.Generator, img: np.ndarray, ghosting: float, ringing: float) -> np.ndarray:
    """Phase-encode motion ghosts and truncation ringing (magnitude domain)."""
    if ghosting > 0:
        ax = int(rng.integers(0, 2))
        n = img.shape[ax]
        base = img.copy()
        for g in range(1, int(rng.integers(1, 3)) + 1):
            shift = int(n // rng.choice([2, 3, 4])) * g
            img = img + (ghosting / g) * np.roll(base, shift, axis=ax)
    if ringing > 0:
        ax = int(rng.integers(0, 2))
        t = np.arange(-8, 9)
        k = np.sinc(t * ringing) * np.hanning(len(t) + 2)[1:-1] ** 0.25
        img = np.maximum(ndi.convolve1d(img, (k / k.sum()).astype(np.float32), axis=ax, mode="nearest"), 0.0)
    return img


def coil_noise(rng: np.random.Generator, signal: np.ndarray, sigma: np.ndarray, n_coils: int) -> np.ndarray:
    """Sum-of-squares magnitude of ``n_coils`` channels (noncentral chi, 2n dof)."""
    n1 = rng.standard_normal(signal.shape, dtype=np.float32)
    rest = rng.standard_gamma((2 * n_coils - 1) / 2.0, size=signal.shape, dtype=np.float32) * 2.0
    return np.sqrt((signal + sigma * n1) ** 2 + sigma**2 * rest)


# ---------------------------------------------------------------------------
# storage


def store(
    rng: np.random.Generator, acq: np.ndarray, grid: SliceGrid, axcodes: str
) -> tuple[nib.Nifti1Image, str, float, int]:
    """Reorder to ``axcodes``, quantize, and round-trip through NIfTI bytes."""
    src = nib.orientations.io_orientation(grid.affine)
    tr = ornt_transform(src, axcodes2ornt(axcodes))
    arr = apply_orientation(acq, tr)
    aff = grid.affine @ inv_ornt_aff(tr, acq.shape)
    kind = str(rng.choice(["int16", "uint16", "float32", "int16_slope"], p=[0.3, 0.2, 0.25, 0.25]))
    slope = 1.0
    top = float(np.percentile(arr[arr > 0], 99.9)) if np.any(arr > 0) else 1.0
    if kind == "float32":
        data = (arr * (rng.uniform(0.5, 3000.0) / top)).astype(np.float32)
    else:
        full = {
            "int16": rng.choice([4095.0, 32000.0]),
            "uint16": rng.choice([4095.0, 60000.0]),
            "int16_slope": 30000.0,
        }[kind]
        scaled = np.clip(arr * (full / top), 0, 32767 if kind != "uint16" else 65535)
        data = np.round(scaled).astype(np.uint16 if kind == "uint16" else np.int16)
        if kind == "int16_slope":
            slope = float(rng.uniform(0.05, 3.0))
    img = nib.Nifti1Image(data, aff)
    qform_only = int(rng.random() < 0.2)
    img.set_qform(aff, code=1)
    img.set_sform(None if qform_only else aff, code=0 if qform_only else int(rng.choice([1, 2])))
    img.header.set_xyzt_units("mm", "sec")
    if slope != 1.0:
        img.header.set_slope_inter(slope, 0.0)
    out = nib.Nifti1Image.from_bytes(img.to_bytes())
    return out, kind, slope, qform_only
