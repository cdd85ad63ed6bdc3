"""The hematoma's CT signs (`cmbdet.classify.signs`) on drawn hematomas whose signs are known, and the
re-acquisition robustness filter (`cmbdet.classify.robustness`)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from cmbdet.classify.linear import fit_lasso_svm
from cmbdet.classify.robustness import intraclass_correlation, perturb_acquisition
from cmbdet.classify.samples import remeasured
from cmbdet.classify.signs import SIGN_NAMES, hematoma_signs
from cmbdet.classify.train import robust_features
from tests.test_classify import _synthetic

SPACING = np.array([0.8, 0.8, 2.0])
SHAPE = (100, 100, 40)


def _grid_mm():
    return np.stack(np.meshgrid(*(np.arange(n) * s for n, s in zip(SHAPE, SPACING, strict=True)), indexing="ij"), -1)


def _head(rng, *, radius_mm=10.0, hole_mm=0.0, islands=0, csf_beside=False, lobes=0):
    """Brain at 32 HU with a 70 HU hematoma centred in the grid (+ an enclosed 35 HU core of ``hole_mm``,
    small separate clots, a CSF pool touching it, extra lobes); the localizer's mask is the blood."""
    xyz = _grid_mm()
    centre = np.array(SHAPE) * SPACING / 2
    r = np.linalg.norm(xyz - centre, axis=-1)
    blood = r < radius_mm
    for k in range(lobes):
        direction = np.array([np.cos(2 * np.pi * k / lobes), np.sin(2 * np.pi * k / lobes), 0.0])
        blood |= np.linalg.norm(xyz - centre - direction * radius_mm * 1.1, axis=-1) < radius_mm * 0.45
    hu = np.full(SHAPE, 32.0)
    hu[blood] = 70.0
    core = r < hole_mm
    hu[core] = 35.0
    for k in range(islands):
        angle = 2 * np.pi * k / max(islands, 1)
        spot = centre + np.array([np.cos(angle), np.sin(angle), 0.0]) * (radius_mm + 6.0)
        hu[np.linalg.norm(xyz - spot, axis=-1) < 2.2] = 68.0
    if csf_beside:
        hu[(xyz[..., 0] > centre[0] + radius_mm) & (np.abs(xyz[..., 1] - centre[1]) < 12)
           & (np.abs(xyz[..., 2] - centre[2]) < 10)] = 5.0
    hu = ndimage.gaussian_filter(hu, 0.6 / SPACING) + rng.normal(0.0, 3.0, SHAPE)
    return hu.astype(np.float32), blood & ~core


def _signs(hu, mask, others=None):
    values, names = hematoma_signs(hu, mask, np.zeros(mask.shape, bool) if others is None else others, SPACING)
    assert names == SIGN_NAMES and np.isfinite(values).all()
    return dict(zip(names, values, strict=True))


def test_each_sign_responds_to_its_own_feature():
    rng = np.random.default_rng(0)
    plain = _signs(*_head(rng))
    assert np.exp(plain["signs.log_volume_ml"]) == pytest.approx(4 / 3 * np.pi * 10.0**3 / 1000, rel=0.15)
    assert plain["signs.solidity"] > 0.9 and plain["signs.island_count"] == 0
    hole = _signs(*_head(rng, hole_mm=4.5))
    assert hole["signs.hole_fraction"] > plain["signs.hole_fraction"] + 0.02
    assert hole["signs.enclosed_hypodense_log_ml"] > plain["signs.enclosed_hypodense_log_ml"] + 0.1
    assert _signs(*_head(rng, islands=4))["signs.island_count"] >= 3
    assert _signs(*_head(rng, lobes=5))["signs.solidity"] < plain["signs.solidity"] - 0.05
    assert _signs(*_head(rng, csf_beside=True))["signs.csf_contact"] > plain["signs.csf_contact"] + 0.03
    hu, mask = _head(rng)
    other = np.zeros(mask.shape, bool)
    other[5:10, 5:10, 18:22] = True  # a second reported lesion, far away
    near = np.roll(mask, 30, axis=0) & ~mask  # and one beside it
    assert _signs(hu, mask, other)["signs.nearby_lesions"] == 0
    assert _signs(hu, mask, near)["signs.nearby_lesions"] == 1


def test_signs_survive_calibration_but_not_a_new_hematoma():
    """Measured relative to the hematoma's own density: a calibration offset changes little."""
    rng = np.random.default_rng(1)
    hu, mask = _head(rng, hole_mm=4.0, islands=3)
    base, shifted = _signs(hu, mask), _signs(hu + 6.0, mask)
    for name in SIGN_NAMES:
        assert shifted[name] == pytest.approx(base[name], rel=0.1, abs=0.05), name


def test_perturbed_acquisition_keeps_the_lesion_and_is_reproducible():
    rng = np.random.default_rng(2)
    hu, mask = _head(rng)
    one = perturb_acquisition(np.random.default_rng(5), hu, mask)
    two = perturb_acquisition(np.random.default_rng(5), hu, mask)
    assert np.array_equal(one[0], two[0]) and np.array_equal(one[1], two[1])
    image, roi = one
    assert image.shape == hu.shape and roi.shape == mask.shape
    core = ndimage.binary_erosion(mask, iterations=3)
    assert abs(float(np.median(image[core])) - 70.0) < 8.0
    assert abs(int(roi.sum()) - int(mask.sum())) < 0.5 * mask.sum()
    assert not np.allclose(image, hu)


def test_intraclass_correlation_and_the_robust_feature_filter():
    rng = np.random.default_rng(3)
    truth = rng.normal(0.0, 1.0, (200, 3))
    copies = np.stack([truth, truth + rng.normal(0.0, [0.05, 1.0, 10.0], truth.shape)])
    icc = intraclass_correlation(copies)
    assert icc[0] > 0.99 and 0.5 < icc[1] < 0.8 and icc[2] < 0.1
    samples = _synthetic("expansion", n_subjects=60)
    assert robust_features(samples) is None
    noisy = samples.radiomics + rng.normal(0.0, 1.0, samples.radiomics.shape) * np.array([0, 0, 5, 5, 0, 0])
    # only the re-measured subjects carry a re-acquisition; rows of the others are NaN and never read
    noisy[~np.array([remeasured(s) for s in samples.subjects])] = np.nan
    samples.perturbed_radiomics = noisy
    assert 10 <= np.isfinite(noisy[:, 0]).sum() < len(noisy) / 2
    assert robust_features(samples).tolist() == [True, True, False, False, True, True]


def test_lasso_keeps_only_allowed_features():
    rng = np.random.default_rng(4)
    x = rng.normal(0, 1, (120, 6))
    y = (x[:, 2] + 0.5 * x[:, 4] + 0.3 * rng.normal(0, 1, 120) > 0).astype(int)
    allowed = np.array([True, True, False, True, True, True])
    chain = fit_lasso_svm(x, y, np.arange(120) // 2, rng, allowed)
    assert not chain.selected[2] and chain.selected[4] and not (chain.selected & ~allowed).any()


def test_shipped_expansion_model_reads_only_features_that_survive_a_reacquisition():
    """The shipped expansion weights record the robust features their training found, and their
    radiomics and fused chains use no other (the deep feature is the fused chain's column 0)."""
    from cmbdet.classify.model import load_classifier

    model = load_classifier("expansion")
    kept = set(model.metadata["validation"]["robust_radiomics"]["kept"])
    assert "ct.morph_volume" in kept and not any(name.startswith("ct.cm_") for name in kept)
    names = np.array(model.names)
    assert set(names[model.chains["radiomics"].selected]) <= kept
    assert set(names[model.chains["fused"].selected[1:]]) <= kept
    assert any(name.startswith("signs.") for name in model.names)


def test_expansion_training_says_when_there_are_too_few_subjects():
    from cmbdet.classify.train import train_expansion

    with pytest.raises(ValueError, match="too few subjects to fit"):
        train_expansion(_synthetic("expansion", n_subjects=3), np.random.default_rng(0), val_fraction=0.25, width=4,
                        epochs=1, ssl_epochs=0, folds=2)
