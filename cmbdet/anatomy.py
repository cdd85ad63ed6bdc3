"""MNI152 anatomy: templates, a synthetic head around them, and MARS regions.

Everything here is computed lazily on first use and cached per process
(``functools.lru_cache``); importing the module does nothing.  The MNI152
2009a symmetric templates that nilearn ships inside its package are read
without network access.

Maps live on the *head grid*: the 1 mm (or 2 mm) MNI152 template grid,
padded 28 mm below (origin ``(-98, -134, -100)`` mm, RAS+ MNI) so that the
face and neck under the brain fit.  The templates are skull-stripped, so the
head (CSF rim, skull, scalp, face, orbits, air sinuses) is synthesized from
the brain envelope and documented approximate shapes.

MARS regions (Gregoire et al. 2009) are built from the templates plus MNI
coordinate geometry (all approximate, good to a few mm):

* infratentorial: brainstem (an elliptic cylinder following the midbrain,
  pons and medulla) and everything below a tentorium surface.  The surface
  starts from a sloping prior ``z = -2 + 0.25 (y + 50) - 0.3 |x|`` mm in the
  posterior fossa and is snapped, column by column, to the CSF gap between
  cerebellum and occipital/temporal lobes found in the template.
* deep: basal ganglia, thalamus and the internal/external capsules (union of
  ellipsoids around caudate, putamen/pallidum, thalamus and a central core),
  corpus callosum (midline white matter above the ventricles), white matter
  deeper than 7 mm from cortical grey matter, periventricular white matter
  (within 8 mm of the lateral ventricles) and the ventricles themselves.
* lobar: everything else inside the brain: cortex (incl. insula, cingulate,
  hippocampus) and juxtacortical white matter of the lobes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

#: Region labels used by :func:`mni_region_map`.
OUTSIDE, LOBAR, DEEP, INFRATENTORIAL = 0, 1, 2, 3
REGION_NAMES: dict[int, str] = {LOBAR: "lobar", DEEP: "deep", INFRATENTORIAL: "infratentorial"}

# ---------------------------------------------------------------------------
# named MNI coordinates (mm, RAS+). Each entry: centre, semi-axes (mm).
# Left/right pairs are listed separately (x < 0 is left).


def _pair(x: float, y: float, z: float, r: tuple[float, float, float]):
    return [((-x, y, z), r), ((x, y, z), r)]


#: Iron-rich deep nuclei (diffusely dark on SWI/T2*, bilateral).
IRON_NUCLEI_MNI: dict[str, list[tuple[tuple[float, float, float], tuple[float, float, float]]]] = {
    "globus_pallidus": _pair(19.0, -4.0, -1.0, (4.5, 8.5, 5.0)),
    "putamen": _pair(25.5, 2.0, 1.0, (5.5, 15.0, 9.0)),
    "caudate": _pair(13.0, 12.0, 10.0, (5.0, 9.0, 8.0)),
    "substantia_nigra": _pair(11.0, -19.0, -12.0, (4.0, 7.0, 3.0)),
    "red_nucleus": _pair(5.5, -20.0, -8.0, (3.2, 4.0, 3.8)),
    "dentate": _pair(15.0, -57.0, -34.0, (6.0, 8.0, 5.5)),
}

#: Air–bone interfaces causing susceptibility dropout in the brain nearby
#: (air cavities outside the brain; centre, semi-axes).
AIR_CAVITIES_MNI: dict[str, list[tuple[tuple[float, float, float], tuple[float, float, float]]]] = {
    "frontal_sinus": [((0.0, 80.0, -2.0), (15.0, 6.0, 11.0))],
    "ethmoid_sinus": [((0.0, 48.0, -38.0), (11.0, 16.0, 8.0))],
    "sphenoid_sinus": [((0.0, 16.0, -50.0), (11.0, 10.0, 8.0))],
    "mastoid_ear": _pair(57.0, -26.0, -44.0, (10.0, 12.0, 9.0)),
    "maxillary_sinus": _pair(26.0, 42.0, -66.0, (11.0, 15.0, 14.0)),
    "nasal_cavity": [((0.0, 60.0, -62.0), (8.0, 22.0, 14.0))],
}

#: Brain zones where air–bone dropout is typically seen (for mimic sampling).
AIR_BONE_ZONES_MNI: dict[str, list[tuple[float, float, float]]] = {
    "orbitofrontal": [(-10.0, 42.0, -24.0), (10.0, 42.0, -24.0), (0.0, 62.0, -10.0)],
    "temporal_pole": [(-40.0, 14.0, -36.0), (40.0, 14.0, -36.0)],
    "inferior_temporal": [(-52.0, -22.0, -32.0), (52.0, -22.0, -32.0)],
    "mastoid_cerebellum": [(-45.0, -50.0, -40.0), (45.0, -50.0, -40.0)],
}

#: Usual sites of physiological calcification (dark dots on magnitude).
CALCIFICATION_SITES_MNI: dict[str, list[tuple[float, float, float]]] = {
    "pineal": [(0.0, -33.0, 3.0)],
    "choroid_plexus": [(-27.0, -42.0, 14.0), (27.0, -42.0, 14.0)],
}

#: Eyeballs (vitreous is bright on T2*), centre and radius (mm).
EYES_MNI: list[tuple[tuple[float, float, float], float]] = [
    ((-32.0, 58.0, -42.0), 12.0),
    ((32.0, 58.0, -42.0), 12.0),
]

_TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
_PAD_BELOW_MM = 28  # head grid extends this far below the template (z = -100 mm)


@functools.cache
def _template_1mm(kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(197, 233, 189) float32 template map and its 4x4 affine (MNI mm)."""
    import nibabel as nib

    try:
        import importlib.resources as resources

        path = resources.files("nilearn") / "datasets" / "data" / _TEMPLATE_FILES[kind]
        img = nib.load(str(path))
    except (OSError, FileNotFoundError, ModuleNotFoundError):  # pragma: no cover - fallback
        from nilearn import datasets

        loader = {
            "t1": datasets.load_mni152_template,
            "gm": datasets.load_mni152_gm_template,
            "wm": datasets.load_mni152_wm_template,
        }[kind]
        img = loader(resolution=1)
    data = np.asarray(img.get_fdata(dtype=np.float32))
    if data.max() > 1.5:  # uint8 storage without scaling
        data = data / np.float32(data.max())
    return np.clip(data, 0.0, 1.0).astype(np.float32), np.asarray(img.affine, dtype=float)


def mni_template(kind: str = "t1", resolution: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """MNI152 ``kind`` in ('t1', 'gm', 'wm', 'csf', 'brain') on the template grid.

    Returns ``(array float32 (197,233,189) at 1 mm or (99,117,95) at 2 mm, affine)``.
    'brain' is nilearn's definition (T1 template > 0.2); 'csf' is the brain
    mask minus grey and white matter.
    """
    if kind in ("t1", "gm", "wm"):
        data, aff = _template_1mm(kind)
    elif kind == "brain":
        t1, aff = _template_1mm("t1")
        data = (t1 > 0.2).astype(np.float32)
    elif kind == "csf":
        gm, aff = _template_1mm("gm")
        wm, _ = _template_1mm("wm")
        brain, _ = mni_template("brain")
        data = np.clip(brain - gm - wm, 0.0, 1.0).astype(np.float32)
    else:
        raise ValueError(f"unknown template kind {kind!r}")
    if resolution == 1:
        return data, aff
    if resolution != 2:
        raise ValueError("resolution must be 1 or 2")
    if kind == "brain":
        small = ndi.gaussian_filter(data, 0.7)[::2, ::2, ::2] > 0.5
        return small.astype(np.float32), _scaled_affine(aff, 2)
    return ndi.gaussian_filter(data, 0.7)[::2, ::2, ::2].astype(np.float32), _scaled_affine(aff, 2)


def _scaled_affine(aff: np.ndarray, step: int) -> np.ndarray:
    out = aff.copy()
    out[:3, :3] *= step
    return out


def _pad_below(arr: np.ndarray, resolution: int, value: float = 0.0) -> np.ndarray:
    n = _PAD_BELOW_MM // resolution
    return np.pad(arr, ((0, 0), (0, 0), (n, 0)), constant_values=value)


def head_grid_affine(resolution: int = 1) -> np.ndarray:
    """4x4 affine of the head grid (template grid padded 28 mm below)."""
    aff = np.diag([float(resolution)] * 3 + [1.0])
    aff[:3, 3] = (-98.0, -134.0, -72.0 - _PAD_BELOW_MM)
    return aff


def _mm_grid(shape: tuple[int, ...], aff: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Open (broadcastable) MNI mm coordinate vectors for an axis-aligned grid."""
    xs = aff[0, 3] + aff[0, 0] * np.arange(shape[0], dtype=np.float32)
    ys = aff[1, 3] + aff[1, 1] * np.arange(shape[1], dtype=np.float32)
    zs = aff[2, 3] + aff[2, 2] * np.arange(shape[2], dtype=np.float32)
    return xs[:, None, None], ys[None, :, None], zs[None, None, :]


def _ellipsoid_r(x, y, z, centre, radii) -> np.ndarray:
    """Normalized ellipsoid radius (1 on the surface)."""
    return np.sqrt(
        ((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + ((z - centre[2]) / radii[2]) ** 2
    )


def _upsample_to(arr2: np.ndarray, shape1: tuple[int, int, int]) -> np.ndarray:
    """Linear interpolation of a 2 mm head-grid map onto the 1 mm head grid."""
    coords = [np.arange(n, dtype=np.float32) / 2.0 for n in shape1]
    out = np.empty(shape1, np.float32)
    # separable linear interpolation (grids are aligned: 1 mm voxel i = 2 mm voxel i/2)
    tmp = _interp_axis(arr2, coords[0], 0)
    tmp = _interp_axis(tmp, coords[1], 1)
    out[...] = _interp_axis(tmp, coords[2], 2)
    return out


def _interp_axis(arr: np.ndarray, pos: np.ndarray, axis: int) -> np.ndarray:
    n = arr.shape[axis]
    p = np.clip(pos, 0, n - 1)
    i0 = np.minimum(np.floor(p).astype(int), n - 2)
    w = (p - i0).astype(np.float32)
    a = np.take(arr, i0, axis=axis)
    b = np.take(arr, i0 + 1, axis=axis)
    shp = [1, 1, 1]
    shp[axis] = -1
    w = w.reshape(shp)
    return a * (1 - w) + b * w


@dataclass(frozen=True)
class MniMaps:
    """Static anatomy on the head grid (see module docstring). Arrays (X, Y, Z).

    gm, wm, csf: tissue fractions (csf = brain CSF: ventricles + sulci + cisterns).
    brain: brain mask (bool). d_env: signed distance (mm) to the smoothed brain
    envelope (negative inside). lower_head: face/neck fraction below the
    cranium. d_vent: distance (mm) to the lateral/third ventricles; vent_idx:
    (3, X, Y, Z) int16 voxel index of the nearest ventricle voxel. d_cortex:
    distance (mm) to cortical grey matter. d_sulc: distance (mm) to sulcal /
    surface CSF. regions: int8 MARS labels. suscept: dimensionless strength of
    air–bone field inhomogeneity (1 at a cavity wall). eyes, air, cistern
    (basal cisterns/sella, CSF-like): float fractions.
    """

    resolution: int
    affine: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray
    d_env: np.ndarray
    lower_head: np.ndarray
    d_vent: np.ndarray
    vent_idx: np.ndarray
    d_cortex: np.ndarray
    d_sulc: np.ndarray
    regions: np.ndarray
    suscept: np.ndarray
    eyes: np.ndarray
    air: np.ndarray
    cistern: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.gm.shape  # type: ignore[return-value]

    def mm_to_vox(self, xyz: np.ndarray) -> np.ndarray:
        """(N, 3) MNI mm -> (N, 3) continuous voxel indices of this grid."""
        return (np.asarray(xyz, float) - self.affine[:3, 3]) / self.resolution


def _ventricle_mask(csf: np.ndarray, brain: np.ndarray, aff: np.ndarray) -> np.ndarray:
    """Lateral + third ventricles: central CSF components inside a box."""
    x, y, z = _mm_grid(csf.shape, aff)
    box = (np.abs(x) < 33) & (y > -88) & (y < 38) & (z > -10) & (z < 40)
    cand = (csf > 0.55) & box & brain
    lab, n = ndi.label(cand)
    if n == 0:
        return cand
    keep = np.zeros(n + 1, bool)
    res = aff[0, 0]
    for seed in ((-16, -8, 20), (16, -8, 20), (-12, 10, 14), (12, 10, 14), (0, -12, 4), (-26, -40, 12), (26, -40, 12)):
        i, j, k = (np.round((np.array(seed) - aff[:3, 3]) / res)).astype(int)
        sub = lab[max(i - 3, 0) : i + 4, max(j - 3, 0) : j + 4, max(k - 3, 0) : k + 4]
        ids = np.unique(sub[sub > 0])
        keep[ids] = True
    sizes = ndi.sum_labels(np.ones_like(lab), lab, np.arange(n + 1))
    keep[sizes < 20 / res**3] = False
    keep[0] = False
    return keep[lab]


def _brainstem_mask(x, y, z) -> np.ndarray:
    # centreline knots: z, y-centre, x-radius, y-radius (mm)
    knots = np.array(
        [
            [-2.0, -24.0, 12.0, 12.0],
            [-8.0, -25.0, 16.0, 13.0],
            [-18.0, -26.0, 16.0, 14.0],
            [-32.0, -27.0, 17.0, 15.0],
            [-46.0, -35.0, 12.0, 11.0],
            [-80.0, -44.0, 10.0, 10.0],
        ]
    )
    zz = z[0, 0, :]
    yc = np.interp(zz, knots[::-1, 0], knots[::-1, 1])[None, None, :]
    rx = np.interp(zz, knots[::-1, 0], knots[::-1, 2])[None, None, :]
    ry = np.interp(zz, knots[::-1, 0], knots[::-1, 3])[None, None, :]
    return ((x / rx) ** 2 + ((y - yc) / ry) ** 2 <= 1.0) & (z <= -2.0)


def _tentorium_z(tissue: np.ndarray, aff: np.ndarray) -> np.ndarray:
    """(X, Y) z (mm) of the tentorium, from a prior snapped to the template's CSF gap."""
    x, y, z = _mm_grid(tissue.shape, aff)
    res = aff[0, 0]
    xx, yy = x[:, :, 0], y[:, :, 0]
    prior = -2.0 + 0.25 * np.minimum(yy + 50.0, 0.0) - 0.3 * np.abs(xx)
    sm = ndi.gaussian_filter(tissue, 1.0 / res)
    zz = z[0, 0, :]
    best = prior.copy()
    best_val = np.full(prior.shape, np.inf, np.float32)
    for dz in np.arange(-9.0, 9.5, res):
        zt = prior + dz
        k = np.clip(np.round((zt - zz[0]) / res).astype(int), 0, len(zz) - 1)
        val = np.take_along_axis(sm, k[:, :, None], axis=2)[:, :, 0] + 0.004 * abs(dz)
        better = val < best_val
        best[better] = zt[better]
        best_val[better] = val[better]
    # only trust columns where there is tissue both above and below the gap
    out = np.where(best_val < 0.75, best, prior)
    return ndi.gaussian_filter(out, 3.0 / res)


def _region_labels(gm, wm, csf, brain, d_vent, vent, d_cortex, aff) -> np.ndarray:
    x, y, z = _mm_grid(gm.shape, aff)
    labels = np.where(brain, LOBAR, OUTSIDE).astype(np.int8)
    # deep grey nuclei + capsules
    core = np.abs(x / 32.0) ** 3 + np.abs((y + 6.0) / 31.0) ** 3 + np.abs((z - 4.0) / 17.0) ** 3 <= 1.0
    for cx, cy, cz, r in (
        (13.0, 13.0, 9.0, (7.0, 11.0, 11.0)),  # caudate head
        (15.0, -8.0, 19.0, (6.0, 15.0, 6.0)),  # caudate body
        (12.0, -18.0, 6.0, (10.0, 15.0, 10.0)),  # thalamus
        (24.0, 1.0, 1.0, (9.0, 18.0, 11.0)),  # lentiform + external capsule
    ):
        for sx in (-1.0, 1.0):
            core |= _ellipsoid_r(x, y, z, (sx * cx, cy, cz), r) <= 1.0
    deep = core.copy()
    deep |= (wm > gm) & (wm > 0.3) & (d_cortex > 7.0)
    deep |= (wm >= gm) & (d_vent <= 8.0) & (z > -8.0)
    deep |= vent
    # corpus callosum: midline white matter between the hemispheres
    deep |= (np.abs(x) <= 10.0) & (wm > 0.4) & (y > -44.0) & (y < 40.0) & (z > -2.0) & (z < 34.0)
    labels[deep & brain] = DEEP
    # infratentorial: brainstem + below the tentorium in the posterior fossa
    zt = _tentorium_z(gm + wm, aff)[:, :, None]
    pf_front = -32.0 - 0.3 * np.abs(x)
    infra = (z < zt) & (y < pf_front) & (z < 0.0)
    infra |= _brainstem_mask(x, y, z)
    labels[infra & brain] = INFRATENTORIAL
    return labels


def _fill_envelope(brain: np.ndarray, res: int) -> np.ndarray:
    """Smooth closed brain envelope (fills sulci), bool."""
    sm = ndi.gaussian_filter(brain.astype(np.float32), 2.5 / res)
    env = sm > 0.35
    return ndi.binary_fill_holes(env)


@functools.lru_cache(maxsize=2)
def mni_maps(resolution: int = 1) -> MniMaps:
    """All static anatomy maps on the head grid at 1 or 2 mm (cached)."""
    if resolution not in (1, 2):
        raise ValueError("resolution must be 1 or 2")
    # distances are computed on the 2 mm grid and upsampled (cheap, smooth)
    if resolution == 1:
        small = mni_maps(2)
    aff = head_grid_affine(resolution)
    gm = _pad_below(mni_template("gm", resolution)[0], resolution)
    wm = _pad_below(mni_template("wm", resolution)[0], resolution)
    brain = _pad_below(mni_template("brain", resolution)[0], resolution) > 0.5
    tissue = gm + wm
    scale = np.where(tissue > 1.0, 1.0 / np.maximum(tissue, 1e-6), 1.0).astype(np.float32)
    gm, wm = gm * scale, wm * scale
    csf = np.where(brain, np.clip(1.0 - gm - wm, 0.0, 1.0), 0.0).astype(np.float32)
    gm = np.where(brain, gm, 0.0).astype(np.float32)
    wm = np.where(brain, wm, 0.0).astype(np.float32)
    x, y, z = _mm_grid(gm.shape, aff)
    vent = _ventricle_mask(csf, brain, aff)
    if resolution == 2:
        res = 2.0
        env = _fill_envelope(brain, 2)
        d_out = ndi.distance_transform_edt(~env, sampling=res)
        d_in = ndi.distance_transform_edt(env, sampling=res)
        d_env = (d_out - d_in).astype(np.float32)
        d_vent, vidx = ndi.distance_transform_edt(~vent, sampling=res, return_indices=True)
        d_vent = d_vent.astype(np.float32)
        vent_idx = vidx.astype(np.int16)
        # cortical grey matter (excluding deep nuclei): distance for juxtacortical WM
        core = np.abs(x / 32.0) ** 3 + np.abs((y + 6.0) / 31.0) ** 3 + np.abs((z - 4.0) / 17.0) ** 3 <= 1.0
        cortex = (gm >= 0.5) & ~core & (gm >= wm)
        d_cortex = ndi.distance_transform_edt(~cortex, sampling=res).astype(np.float32)
        sulc = ((csf > 0.5) & ~vent) | ~brain
        d_sulc = ndi.distance_transform_edt(~sulc, sampling=res).astype(np.float32)
    else:
        shp = gm.shape
        d_env = _upsample_to(small.d_env, shp)
        d_vent = _upsample_to(small.d_vent, shp)
        d_cortex = _upsample_to(small.d_cortex, shp)
        d_sulc = _upsample_to(small.d_sulc, shp)
        # nearest ventricle voxel: from the 2 mm map, rescaled to 1 mm indices
        sel = tuple(np.minimum(np.arange(n) // 2, m - 1) for n, m in zip(shp, small.shape))
        vent_idx = (small.vent_idx[:, sel[0]][:, :, sel[1]][:, :, :, sel[2]] * 2).astype(np.int16)
    regions = _region_labels(gm, wm, csf, brain, d_vent, vent, d_cortex, aff)
    # head outside the cranium: face + neck (bool)
    lower = _lower_head(x, y, z)
    # soft (partial-volume) masks so oblique resampling shows no staircases
    eyes = np.zeros(gm.shape, np.float32)
    for c, r in EYES_MNI:
        rr = _ellipsoid_r(x, y, z, c, (r, r, r))
        np.maximum(eyes, np.clip((1.0 - rr) * r + 0.5, 0.0, 1.0), out=eyes)
    air = np.zeros(gm.shape, np.float32)
    suscept = np.zeros(gm.shape, np.float32)
    for name, items in AIR_CAVITIES_MNI.items():
        for c, r in items:
            rr = _ellipsoid_r(x, y, z, c, r)
            reff = float(np.mean(r))
            np.maximum(air, np.clip((1.0 - rr) * reff / 1.5 + 0.5, 0.0, 1.0), out=air)
            dist = np.maximum(rr - 1.0, 0.0) * reff
            w = 0.6 if name in ("maxillary_sinus", "nasal_cavity") else 1.0
            suscept += (w * (reff / (reff + 1.6 * dist)) ** 3).astype(np.float32)
    air *= ~brain
    # basal cisterns / sella (CSF and soft tissue under the diencephalon, not bone)
    rr = _ellipsoid_r(x, y, z, (0.0, 0.0, -22.0), (15.0, 22.0, 13.0))
    cistern = (np.clip((1.0 - rr) * 10.0 + 0.5, 0.0, 1.0) * ~brain).astype(np.float32)
    return MniMaps(
        resolution=resolution,
        affine=aff,
        gm=gm,
        wm=wm,
        csf=csf,
        brain=brain,
        d_env=d_env,
        lower_head=lower,
        d_vent=d_vent,
        vent_idx=vent_idx,
        d_cortex=d_cortex,
        d_sulc=d_sulc,
        regions=regions,
        suscept=suscept,
        eyes=eyes,
        air=air,
        cistern=cistern,
    )


def _lower_head(x, y, z) -> np.ndarray:
    """Face and neck below the cranium (approximate elliptic cross-sections), soft fraction."""
    t = (np.clip(z, -100.0, -20.0) + 20.0) / -80.0  # 0 at z=-20 .. 1 at z=-100
    rx = 74.0 - 14.0 * t
    y_front = 88.0 - 8.0 * t
    y_back = -112.0 + 25.0 * t
    yc = 0.5 * (y_front + y_back)
    ry = 0.5 * (y_front - y_back)
    rr = np.sqrt((x / rx) ** 2 + ((y - yc) / ry) ** 2)
    frac = np.clip((1.0 - rr) * 60.0 / 1.5 + 0.5, 0.0, 1.0) * np.clip((-10.0 - z) / 3.0 + 0.5, 0.0, 1.0)
    return frac.astype(np.float32)


def mni_region_map(resolution: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """MARS region labels on the MNI152 template grid.

    Returns ``(labels, affine)``: int8 array (197, 233, 189) at 1 mm
    ((99, 117, 95) at 2 mm) with 0 outside the brain, 1 lobar, 2 deep,
    3 infratentorial; affine maps voxel indices to MNI mm (RAS+).
    """
    maps = mni_maps(resolution)
    n = _PAD_BELOW_MM // resolution
    _, aff = mni_template("gm", resolution)
    return maps.regions[:, :, n:].copy(), aff


def region_at_mni(xyz_mm: np.ndarray, resolution: int = 1) -> np.ndarray:
    """Region label(s) at MNI mm point(s) ``(N, 3)`` (nearest voxel; 0 outside)."""
    maps = mni_maps(resolution)
    pts = np.atleast_2d(np.asarray(xyz_mm, float))
    ijk = np.round(maps.mm_to_vox(pts)).astype(int)
    inside = np.all((ijk >= 0) & (ijk < np.array(maps.shape)), axis=1)
    out = np.zeros(len(pts), np.int8)
    i, j, k = ijk[inside].T
    out[inside] = maps.regions[i, j, k]
    return out
