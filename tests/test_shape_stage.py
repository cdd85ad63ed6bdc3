"""Stage 2's shape model: ball-or-tube measurements, the tree ensemble kept as arrays, and its place
in the stage-2 weights and scores."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from cmbdet.reclassifier.shape import FEATURE_NAMES, shape_features
from cmbdet.reclassifier.shape_model import ShapeModel, fit_shape_model
from cmbdet.volume import volume_from_image


def _scene(affine: np.ndarray, scale: float = 100.0, shape=(72, 72, 48)):
    """A volume with a dark ball (3 mm) at world (10, -20, 5) and a dark tube (1.6 mm) along an
    oblique line through (-5, -20, 5)."""
    data = np.full(shape, 1.0, dtype=np.float32)
    ijk = np.indices(shape).reshape(3, -1).T
    world = nib.affines.apply_affine(affine, ijk)
    ball = np.linalg.norm(world - [10, -20, 5], axis=1) <= 1.5
    direction = np.array([1.0, 0.6, 1.0]) / np.linalg.norm([1.0, 0.6, 1.0])
    rel = world - [-5, -20, 5]
    along = rel @ direction
    tube = np.linalg.norm(rel - along[:, None] * direction, axis=1) <= 0.8
    flat = data.reshape(-1)
    flat[ball | tube] = 0.15
    rng = np.random.default_rng(0)
    data = data + rng.normal(0, 0.02, data.shape).astype(np.float32)
    return volume_from_image(nib.Nifti1Image(data * scale, affine))


AFFINE = np.array([[-0.5, 0, 0, 20], [0, 0.5, 0, -38], [0, 0, 1.0, -18], [0, 0, 0, 1]])  # LAS, 0.5 x 0.5 x 1 mm


def _named(row: np.ndarray) -> dict[str, float]:
    return dict(zip(FEATURE_NAMES, row.tolist(), strict=True))


def test_a_ball_and_a_tube_are_told_apart_whatever_the_intensity_scale():
    volume = _scene(AFFINE)
    ball, tube = (_named(r) for r in shape_features(volume, [[10.4, -20.3, 5.5], [-5, -20, 5]]))
    assert ball["depth"] > 0.5 and tube["depth"] > 0.4, "both are dark against the tissue around them"
    assert ball["offset_mm"] < 1.5, "the candidate moves onto the darkest point"
    assert ball["s1_blobness"] > 0.5 > tube["s1_blobness"]
    assert tube["s1_tubeness"] > ball["s1_tubeness"]
    assert tube["quarter_elongation"] > 2 * ball["quarter_elongation"]
    assert tube["through_darkness"] > 0.5 > ball["through_darkness"], "the tube runs on through its dot"
    assert ball["slice_mm"] == pytest.approx(1.0) and ball["inplane_mm"] == pytest.approx(0.5)
    rescaled = shape_features(_scene(AFFINE, scale=7.0), [[10.4, -20.3, 5.5], [-5, -20, 5]])
    np.testing.assert_allclose(rescaled, shape_features(volume, [[10.4, -20.3, 5.5], [-5, -20, 5]]),
                               rtol=1e-3, atol=1e-3)


def test_a_large_microbleed_is_measured_at_its_own_size_and_a_thick_vessel_is_not(monkeypatch):
    import cmbdet.reclassifier.shape as shape_module

    shape = (100, 100, 60)
    data = np.full(shape, 1.0, dtype=np.float32)
    world = nib.affines.apply_affine(AFFINE, np.indices(shape).reshape(3, -1).T)
    data.reshape(-1)[np.linalg.norm(world - [0, -15, 8], axis=1) <= 5.0] = 0.15  # a 10 mm focus
    data.reshape(-1)[np.linalg.norm(world - [-10, -5, 8], axis=1) <= 1.5] = 0.15  # a 3 mm one
    data.reshape(-1)[np.linalg.norm((world - [12, 5, 8])[:, 1:], axis=1) <= 2.5] = 0.15  # a 5 mm vessel along x
    data += np.random.default_rng(0).normal(0, 0.02, shape).astype(np.float32)
    volume = volume_from_image(nib.Nifti1Image(data * 100, AFFINE))
    points = [[0.5, -15, 8], [-10, -5, 8], [12, 5, 8]]
    large, small, vessel = (_named(r) for r in shape_features(volume, points))
    monkeypatch.setattr(shape_module, "ZOOM_MIN_DEPTH", 2.0)  # no focus is ever zoomed
    usual_large, usual_small, usual_vessel = (_named(r) for r in shape_features(volume, points))
    assert small == usual_small and vessel == usual_vessel, "only a large compact focus is measured again"
    # at the usual cube size the 10 mm focus fills the straight paths (a vein's signature) and is flat at 0.75 mm;
    # at its own size it reads as the 3 mm one does
    assert usual_large["through_darkness"] > 0.3 and usual_large["s1_blobness"] < 0.5
    assert large["through_darkness"] < 0.2 and large["s1_blobness"] > 0.5
    for name in ("through_darkness", "s1_blobness", "half_elongation", "half_axis1_mm"):
        assert large[name] == pytest.approx(small[name], abs=0.3), name


def test_context_tells_tissue_from_csf_and_from_signal_loss():
    from cmbdet.preprocess import WorkingImage
    from cmbdet.reclassifier.context import CONTEXT_NAMES, context_features

    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = -60
    image = np.ones((120, 120, 120), np.float32)
    mask = np.zeros(image.shape, bool)
    mask[10:110, 10:110, 10:110] = True
    image[60:75, 50:70, 50:70] = 2.0  # a CSF-bright ventricle
    image[20:35, 20:40, 50:70] = 0.2  # signal loss
    working = WorkingImage(image=image, mask=mask, affine=affine)
    in_tissue, by_csf, by_loss, at_edge = (dict(zip(CONTEXT_NAMES, r.tolist(), strict=True)) for r in context_features(
        working, [[-20, 20, 0], [7, 0, 0], [-30, -30, 0], [-48, 0, 0]]))
    assert in_tissue["near_level"] == pytest.approx(1.0) and in_tissue["near_csf_share"] == 0
    assert in_tissue["near_brain_share"] == 1.0
    assert by_csf["near_csf_share"] > 0.3 and by_csf["near_level"] > in_tissue["near_level"]
    assert by_loss["near_dark_share"] > 0.3 and by_loss["near_csf_share"] == 0
    assert at_edge["wide_brain_share"] < 0.8
    assert context_features(working, np.zeros((0, 3))).shape == (0, len(CONTEXT_NAMES))


def test_features_do_not_depend_on_the_axis_order_of_the_file():
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    volume = _scene(AFFINE)
    image = nib.Nifti1Image(np.asarray(volume.data), volume.affine)  # canonical RAS
    reordered = image.as_reoriented(ornt_transform(io_orientation(image.affine), axcodes2ornt(("P", "I", "R"))))
    other = volume_from_image(reordered)
    assert nib.aff2axcodes(other.source.affine) == ("P", "I", "R")
    points = [[10.4, -20.3, 5.5], [-5, -20, 5]]
    np.testing.assert_allclose(shape_features(other, points), shape_features(volume, points), atol=1e-4)


def test_points_outside_or_on_flat_tissue_give_finite_rows():
    volume = _scene(AFFINE)
    rows = shape_features(volume, [[500.0, 0, 0], [0.0, 0.0, 5.0]])
    assert rows.shape == (2, len(FEATURE_NAMES)) and np.isfinite(rows).all()
    assert shape_features(volume, np.zeros((0, 3))).shape == (0, len(FEATURE_NAMES))


def _toy_data(n=1500, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(FEATURE_NAMES)))
    y = x[:, 0] + 0.5 * x[:, 5] ** 2 + rng.normal(size=n) > 0.8
    return x, y


def test_tree_arrays_score_exactly_as_scikit_learn_and_survive_a_round_trip():
    from sklearn.ensemble import HistGradientBoostingClassifier

    x, y = _toy_data()
    model = fit_shape_model(x, y, max_iter=40, seed=3)
    reference = HistGradientBoostingClassifier(max_iter=40, learning_rate=0.05, max_leaf_nodes=15,
                                               min_samples_leaf=40, l2_regularization=1.0, early_stopping=False,
                                               random_state=3).fit(x, y)
    np.testing.assert_allclose(model.probability(x), reference.predict_proba(x)[:, 1], atol=1e-12)
    x_missing = x.copy()
    x_missing[::7, 0] = np.nan
    np.testing.assert_allclose(model.probability(x_missing), reference.predict_proba(x_missing)[:, 1], atol=1e-12)
    again = ShapeModel.from_arrays(model.arrays(), FEATURE_NAMES)
    np.testing.assert_array_equal(again.probability(x), model.probability(x))
    with pytest.raises(ValueError, match="other shape features"):
        ShapeModel.from_arrays(model.arrays(), FEATURE_NAMES[:-1])
    with pytest.raises(ValueError, match="both"):
        fit_shape_model(x, np.ones(len(x), bool))


def test_stage2_weights_carry_the_shape_model_and_detections_show_both_scores(tmp_path):
    from cmbdet.detections import Detections
    from cmbdet.reclassifier.infer import Reclassifier, load_reclassifier, reclassify, stage2_probability
    from cmbdet.reclassifier.yolo import build_classifier

    x, y = _toy_data()
    shape = fit_shape_model(x, y, max_iter=20)
    net = build_classifier(2)
    yaml = dict(net.yaml)
    model = Reclassifier(net=net, yaml=yaml, threshold=0.3, stage1_weight=0.2, shape=shape, shape_weight=0.75,
                         layout="mips")
    path = model.save(tmp_path / "stage2.safetensors")
    loaded = load_reclassifier(path)
    assert loaded.shape is not None and loaded.shape_weight == 0.75 and loaded.layout == "mips"
    np.testing.assert_array_equal(loaded.shape.probability(x[:50]), shape.probability(x[:50]))

    volume = _scene(AFFINE)
    candidates = Detections(xyz_mm=np.array([[10.4, -20.3, 5.5], [-5.0, -20.0, 5.0]]), score=np.array([0.6, 0.5]),
                            diameter_mm=np.array([3.0, 3.0]), stage_scores={"stage1": np.array([0.6, 0.5])})
    scored = reclassify(volume, candidates, loaded)
    assert {"yolo", "shape", "stage2"} <= set(scored.stage_scores)
    expected = stage2_probability(scored.stage_scores["yolo"], scored.stage_scores["shape"], 0.75)
    np.testing.assert_allclose(scored.stage_scores["stage2"], expected)
    np.testing.assert_allclose(stage2_probability(np.array([0.25]), np.array([0.81]), 0.5), [0.45])
    np.testing.assert_allclose(stage2_probability(np.array([0.25]), None, 0.5), [0.25])


def test_validation_chooses_the_shape_share_and_candidate_count_that_score_best():
    from cmbdet.reclassifier.shape_train import ShapeSamples, choose_stage2_point, train_shape_model

    rng = np.random.default_rng(5)
    n_features = len(FEATURE_NAMES)

    def scan(subject: str, n_cmb: int, n_candidates: int = 40) -> tuple[ShapeSamples, np.ndarray]:
        cmb_xyz = rng.uniform(-50, 50, (n_cmb, 3))
        mimic_xyz = rng.uniform(-50, 50, (n_candidates - n_cmb, 3))
        xyz = np.concatenate([cmb_xyz, mimic_xyz])
        is_cmb = np.arange(n_candidates) < n_cmb
        features = rng.normal(size=(n_candidates, n_features))
        features[:, 0] += np.where(is_cmb, 3.0, 0.0)  # the shape feature that tells them apart
        stage1 = np.where(is_cmb, 0.5, 0.5) + rng.uniform(-0.05, 0.05, n_candidates)
        order = np.argsort(-stage1)
        rows = [{"subject": subject, "x_mm": p[0], "y_mm": p[1], "z_mm": p[2], "score": s}
                for p, s in zip(xyz[order], stage1[order], strict=True)]
        truth = [{"subject": subject, "x_mm": p[0], "y_mm": p[1], "z_mm": p[2], "diameter_mm": 3.0} for p in cmb_xyz]
        samples = ShapeSamples(subject, rows, features[order], is_cmb[order], ~is_cmb[order],
                               features[:n_cmb] + 0.1, truth, np.zeros((0, n_features)))
        yolo = rng.uniform(0.2, 0.8, n_candidates)  # uninformative
        return samples, yolo

    train = [scan(f"t{n}", 4)[0] for n in range(12)]
    shape = train_shape_model(train, seed=0)
    val = [scan(f"v{n}", 3) for n in range(6)]
    best, rows = choose_stage2_point([s for s, _ in val], [y for _, y in val], shape, counts=(10, 40))
    assert len(rows) == 2 * 5 and {r["max_candidates"] for r in rows} == {10, 40}
    assert best["shape_weight"] >= 0.5 and best["max_candidates"] == 40
    yolo_alone = max(r["f1"] for r in rows if r["shape_weight"] == 0.0)
    assert best["f1"] > yolo_alone + 0.2


def test_stage_ones_working_image_is_reused_not_made_again(monkeypatch):
    """The working grid is only about 1 mm (corner voxel centres kept); stage 1's image must still be taken
    for the context measurements, not remade (the same image, ~0.8 s per scan)."""
    import cmbdet.reclassifier.shape as shape_module
    from cmbdet.preprocess import prepare_working_image

    volume = _scene(AFFINE)
    points = [[10.4, -20.3, 5.5], [-5, -20, 5]]
    working = prepare_working_image(volume, shape_module.CONTEXT_SPACING_MM)
    assert not np.allclose(working.spacing_mm, shape_module.CONTEXT_SPACING_MM)  # the case that matters
    made = []
    monkeypatch.setattr(shape_module, "prepare_working_image",
                        lambda *args, **kwargs: made.append(1) or prepare_working_image(*args, **kwargs))
    reused = shape_features(volume, points, working)
    assert made == []
    np.testing.assert_array_equal(reused, shape_features(volume, points))
    assert made == [1]
