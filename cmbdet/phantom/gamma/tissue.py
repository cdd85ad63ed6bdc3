"""T2*-weighted tissue signal of the gamma family on the MNI grid.

Spoiled-GRE steady state per tissue, ``S = PD * sin(a)(1-E1)/(1-cos(a)E1) *
exp(-TE R2*)``, mixed by partial volume, with iron darkening of the deep
nuclei, atrophy (tissue fraction handed to CSF), a skull/scalp shell and
through-slice dephasing near the air cavities.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from cmbdet.phantom.gamma.head import HeadMaps, nucleus_list


def tissue_params(rng: np.random.Generator, field_t: float) -> dict:
    """Per-subject relaxation/PD draw (1/s, ms); wide ranges on purpose."""
    hi = field_t >= 3.0
    r2 = {"gm": rng.uniform(13, 19), "wm": rng.uniform(19, 27), "csf": rng.uniform(1.5, 6)}
    if not hi:
        r2 = {k: v * rng.uniform(0.5, 0.65) for k, v in r2.items()}
    t1 = {
        "gm": rng.uniform(1300, 1650) if hi else rng.uniform(1000, 1250),
        "wm": rng.uniform(780, 960) if hi else rng.uniform(600, 760),
        "csf": rng.uniform(3500, 4400),
    }
    pd = {"gm": rng.uniform(0.8, 0.92), "wm": rng.uniform(0.6, 0.71), "csf": 1.0}
    return {
        "r2": r2,
        "t1": t1,
        "pd": pd,
        "iron_gain": rng.uniform(0.6, 1.4),
        "air_gain": rng.uniform(0.5, 1.3),
        "marrow": rng.uniform(0.3, 0.9),
        "scalp": rng.uniform(0.4, 1.0),
        "bone": rng.uniform(0.01, 0.06),
        "t_csf": rng.uniform(0.5, 3.0),
        "t_skull": rng.uniform(5.0, 9.0),
        "t_scalp": rng.uniform(3.5, 7.0),
        "skull_tilt": rng.uniform(-0.25, 0.25, 2),
        "iron_phase": rng.uniform(0.4, 1.2),
    }


def gre_signal(pd: float, t1_ms: float, r2s: float, tr_ms: float, te_ms: float, flip_deg: float) -> float:
    a = np.deg2rad(flip_deg)
    e1 = np.exp(-tr_ms / t1_ms)
    return float(pd * np.sin(a) * (1 - e1) / (1 - np.cos(a) * e1) * np.exp(-te_ms / 1000.0 * r2s))


def mni_signal(
    maps: HeadMaps, tp: dict, pp: dict, atrophy: float, rng: np.random.Generator, want_phase: bool
) -> tuple[np.ndarray, np.ndarray | None, float]:
    """Magnitude (relative to WM = 1) and SWI iron phase (rad) on the MNI grid; also S_wm."""
    te, tr, flip, b0 = pp["te_ms"], pp["tr_ms"], pp["flip_deg"], pp["field_t"]
    s = {k: gre_signal(tp["pd"][k], tp["t1"][k], tp["r2"][k], tr, te, flip) for k in ("gm", "wm", "csf")}
    ref = s["wm"]
    s = {k: v / ref for k, v in s.items()}
    tissue = maps.gm + maps.wm
    kept = np.clip((tissue - atrophy * 0.5) / (1.0 - atrophy * 0.5), 0.0, 1.0)  # tissue fraction after atrophy
    keep = kept / np.maximum(tissue, 1e-6)
    sig = (maps.gm * np.float32(s["gm"]) + maps.wm * np.float32(s["wm"])) * keep
    sig += (maps.brain - kept) * np.float32(s["csf"])
    sig *= maps.brain
    sig = np.ascontiguousarray(sig, dtype=np.float32)
    del tissue, keep
    phase = np.zeros(sig.shape, np.float32) if want_phase else None
    inv = np.linalg.inv(maps.affine)
    x_ax, y_ax, z_ax = maps.axes_mm()
    lo_all, hi_all = np.array(sig.shape), np.zeros(3, int)
    for _name, c, axes, (lo, hi) in nucleus_list():
        c = c + rng.normal(0, 1.2, 3)
        axes = axes * rng.uniform(0.85, 1.15, 3)
        dr2 = rng.uniform(lo, hi) * (b0 / 3.0) * tp["iron_gain"]
        ijk_lo = np.floor((c - 1.6 * axes) @ inv[:3, :3].T + inv[:3, 3]).astype(int)
        ijk_hi = np.ceil((c + 1.6 * axes) @ inv[:3, :3].T + inv[:3, 3]).astype(int) + 1
        ijk_lo = np.maximum(ijk_lo, 0)
        ijk_hi = np.minimum(ijk_hi, np.array(sig.shape))
        sl = tuple(slice(a, b) for a, b in zip(ijk_lo, ijk_hi, strict=True))
        rho = np.sqrt(
            ((x_ax[sl[0]][:, None, None] - c[0]) / axes[0]) ** 2
            + ((y_ax[sl[1]][None, :, None] - c[1]) / axes[1]) ** 2
            + ((z_ax[sl[2]][None, None, :] - c[2]) / axes[2]) ** 2
        )
        w = 1.0 / (1.0 + np.exp((rho - 1.0) / 0.1))
        sig[sl] *= np.exp(-te / 1000.0 * dr2 * w * kept[sl]).astype(np.float32)
        if phase is not None:
            phase[sl] += (tp["iron_phase"] * dr2 / 40.0 * (te / 20.0) * w).astype(np.float32)
            lo_all = np.minimum(lo_all, ijk_lo)
            hi_all = np.maximum(hi_all, ijk_hi)
    if phase is not None:  # homodyne-like high pass: remove the smooth part (around the nuclei only)
        m = int(np.ceil(16.0 / maps.step))
        crop = tuple(slice(max(0, a - m), min(n, b + m)) for a, b, n in zip(lo_all, hi_all, sig.shape, strict=True))
        phase[crop] -= ndi.gaussian_filter(phase[crop], 5.0 / maps.step)
    # skull/scalp shell outside the brain mask; thickness varies front-back / up-down
    _i, j, k = np.unravel_index(maps.shell_idx, sig.shape)
    zt = 1.0 + tp["skull_tilt"][0] * (z_ax[k] / 80.0) + tp["skull_tilt"][1] * (y_ax[j] / 100.0)
    d = maps.d_out.ravel()[maps.shell_idx]
    t1_, t2_ = tp["t_csf"], tp["t_csf"] + tp["t_skull"] * zt
    t3_ = t2_ + tp["t_scalp"]
    frac = (d - t1_) / np.maximum(t2_ - t1_, 1e-3)
    marrow = (frac > 0.3) & (frac < 0.7)
    shell = np.where(
        d <= t1_,
        s["csf"],
        np.where(d <= t2_, np.where(marrow, tp["marrow"], tp["bone"]), np.where(d <= t3_, tp["scalp"], 0.0)),
    )
    shell[maps.air.ravel()[maps.shell_idx]] = 0.0
    flat = sig.reshape(-1)
    flat[maps.shell_idx] = shell
    x = tp["air_gain"] * 400.0 * b0 * (te / 1000.0) * float(pp["voxel"][2]) * maps.air_g.ravel()[maps.air_idx]
    flat[maps.air_idx] *= np.abs(np.sinc(x)).astype(np.float32)
    return sig, phase, ref
