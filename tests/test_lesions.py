"""Hemorrhagic lesions: CT phantoms (truth, storage, expansion labels), the CT input path (HU
refusal, modality decision, brain mask), lesion measurements, MRI grouping."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from cmbdet.errors import InputError
from cmbdet.lesions.ct import ct_brain_mask, guess_modality, load_ct_volume
from cmbdet.lesions.infer import classical_ct_lesions
from cmbdet.lesions.mri import group_mri_files, sequence_of
from cmbdet.lesions.result import abc_over_2_ml, measure_lesions
from cmbdet.phantom.ct import make_ct_subject
from cmbdet.phantom.ct.lesion import EXPANSION_FRACTION, EXPANSION_ML, Hematoma, radius_scale
from cmbdet.volume import volume_from_image


def tiny_ct_head(affine: np.ndarray, shape=(60, 70, 40), blob_mm=(12.0, 6.0, 4.0), blob_radius_mm=9.0,
                 blob_hu=70.0, seed=0) -> np.ndarray:
    """HU on any grid: air, a 6 mm skull (1200 HU) around an ellipsoidal brain (32 HU) with a
    calcification (400 HU) and a blood blob (``blob_hu``) at a world point, plus noise."""
    rng = np.random.default_rng(seed)
    ijk = np.indices(shape).reshape(3, -1).T
    world = nib.affines.apply_affine(affine, ijk)
    r = np.sqrt((world[:, 0] / 62) ** 2 + (world[:, 1] / 78) ** 2 + (world[:, 2] / 56) ** 2)
    hu = np.full(len(world), -1000.0)
    hu[r < 1.08] = 40.0  # scalp
    hu[r < 1.0] = 1200.0  # skull
    hu[r < 0.9] = 32.0  # brain
    if blob_radius_mm > 0:
        hu[np.linalg.norm(world - np.asarray(blob_mm), axis=1) <= blob_radius_mm] = blob_hu
    hu[np.linalg.norm(world - np.array([-20.0, -30.0, 10.0]), axis=1) <= 2.5] = 400.0
    hu = hu + rng.normal(0.0, 3.0, hu.shape)
    return hu.reshape(shape)


def save_ct(path, hu: np.ndarray, affine: np.ndarray, intercept: float = -1024.0) -> None:
    raw = np.rint(hu - intercept).astype(np.int16)
    image = nib.Nifti1Image(raw, affine)
    image.header.set_slope_inter(1.0, intercept)
    nib.save(image, str(path))


LPS_TILTED = np.array([[-3.0, 0, 0, 90], [0, -3.0, 0.5, 110], [0, 0.3, 4.0, -70], [0, 0, 0, 1]])


@pytest.fixture(scope="module")
def ct_pair():
    return make_ct_subject(np.random.default_rng([7, 3]), subject="sub-t", family="ct-a", fast=True, pairs=True,
                           p_free=0.0)


def test_ct_phantom_storage_and_truth(ct_pair):
    image = nib.Nifti1Image.from_bytes(ct_pair.image.to_bytes())  # as written to disk and read back
    truth = ct_pair.truth
    assert image.get_data_dtype() == np.int16
    assert image.dataobj.inter == pytest.approx(ct_pair.protocol["intercept"]) and image.dataobj.slope == 1.0
    hu = np.asarray(image.dataobj, dtype=np.float32)
    assert hu.min() == pytest.approx(-1024.0, abs=30) and hu.max() > 700  # air and bone
    assert truth.shape == image.shape and np.allclose(truth.affine, image.affine)
    labels = np.asarray(truth.dataobj)
    voxel_ml = float(np.prod(image.header.get_zooms()[:3])) / 1000.0
    assert ct_pair.lesions, "p_free=0 gives a hematoma"
    for row in ct_pair.lesions:
        n = row["lesion_id"]
        count = int((labels == n).sum())
        assert row["volume_ml"] == pytest.approx(count * voxel_ml, rel=1e-3)
        assert row["volume_ml"] == pytest.approx(row["true_ml"], rel=0.2, abs=0.3)
        assert 30.0 < float(np.median(hu[labels == n])) < 100.0  # blood density (heterogeneity, partial volume)
        centroid = nib.affines.apply_affine(image.affine, np.argwhere(labels == n)).mean(axis=0)
        assert np.allclose(centroid, [row["x_mm"], row["y_mm"], row["z_mm"]], atol=0.1)
        grown = row["followup_true_ml"] - row["true_ml"]
        assert row["expands"] == int(grown >= EXPANSION_ML or grown >= EXPANSION_FRACTION * row["true_ml"])
        assert row["expands"] == row["drawn_expands"]  # the painted follow-up holds the drawn growth
        assert 0.0 < row["p_expand"] < 1.0
    follow = np.asarray(ct_pair.followup.truth.dataobj)
    for row in ct_pair.lesions:
        assert row["followup_ml"] == pytest.approx(int((follow == row["lesion_id"]).sum()) * voxel_ml, rel=1e-3)


def test_followup_reaches_the_drawn_growth_where_painting_falls_short():
    # a painter that lays down less blood than the cube law says (as one clipped at the brain's edge):
    # the baseline is matched in one step; the follow-up is iterated until it holds baseline + growth
    h = Hematoma(centre_mni=np.zeros(3), target_ml=20.0, density_hu=60.0, irregularity=0.2)

    def blood_ml(scale: float) -> float:
        return 20.0 * scale**2

    base = radius_scale(h, 0.0, blood_ml)
    assert blood_ml(base) == pytest.approx(20.0)
    grown = radius_scale(h, 10.0, blood_ml)
    assert blood_ml(grown) == pytest.approx(30.0, rel=0.02)
    assert blood_ml(base * 1.5 ** (1 / 3)) < 0.9 * 30.0  # what scaling the radius once by the growth gave
    assert radius_scale(h, 0.0, blood_ml) == base  # cached: the baseline is painted the same every time


def test_expansion_labels_follow_the_drawn_growth_near_the_ventricles():
    # ct-a seed 300 subject 0: a deep hematoma with ventricular extension whose drawn expansion
    # (5.99 -> 10.3 mL) revision 1 painted as 6.99 mL, a stable label
    ph = make_ct_subject(np.random.default_rng([300, 0]), subject="sub-x", family="ct-a", fast=True, pairs=True,
                         p_free=0.0)
    assert ph.protocol["revision"] == 2
    row = ph.lesions[0]
    assert row["drawn_expands"] == 1 and row["expands"] == 1
    assert row["followup_true_ml"] > row["true_ml"] + EXPANSION_FRACTION * row["true_ml"]


def test_ct_phantom_held_out_family_hemorrhage_free():
    ph = make_ct_subject(np.random.default_rng([8, 1]), subject="sub-f", family="ct-b", fast=True, p_free=1.0)
    assert ph.lesions == [] and not np.asarray(ph.truth.dataobj).any()
    assert ph.protocol["family"] == "ct-b"


def test_ct_loader_applies_scaling_and_refuses_non_hu(tmp_path):
    hu = tiny_ct_head(LPS_TILTED)
    save_ct(tmp_path / "ct.nii.gz", hu, LPS_TILTED)
    volume = load_ct_volume(tmp_path / "ct.nii.gz")
    assert volume.data.min() < -900 and volume.data.max() > 1000
    assert any("HU" in note for note in volume.notes)
    assert guess_modality(tmp_path / "ct.nii.gz")[0] == "ct"
    mri = nib.Nifti1Image(np.clip(hu + 1000.0, 0, None).astype(np.float32), LPS_TILTED)  # no air below -100
    nib.save(mri, str(tmp_path / "mri.nii.gz"))
    with pytest.raises(InputError, match="not a CT in Hounsfield units"):
        load_ct_volume(tmp_path / "mri.nii.gz")
    modality, reason = guess_modality(tmp_path / "mri.nii.gz")
    assert modality == "mri" and "MRI" in reason


def test_ct_brain_mask_bright_skull():
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-70, -85, -60]
    hu = tiny_ct_head(affine, shape=(71, 86, 61))
    world = nib.affines.apply_affine(affine, np.indices(hu.shape).reshape(3, -1).T)
    r = np.sqrt((world[:, 0] / 62) ** 2 + (world[:, 1] / 78) ** 2 + (world[:, 2] / 56) ** 2).reshape(hu.shape)
    mask = ct_brain_mask(hu, np.array([2.0, 2.0, 2.0]))
    brain = r < 0.86
    assert mask[brain].mean() > 0.95  # the brain, the blood blob and the calcification inside
    assert not (mask & (hu > 300) & (r > 0.92)).any()  # never the skull
    assert mask[r > 1.0].mean() < 0.01  # nor the scalp or air


def test_classical_peer_measures_a_blob(tmp_path):
    hu = tiny_ct_head(LPS_TILTED, blob_radius_mm=10.0)
    save_ct(tmp_path / "ct.nii.gz", hu, LPS_TILTED)
    volume = load_ct_volume(tmp_path / "ct.nii.gz")
    lesions = classical_ct_lesions(volume)
    assert len(lesions) == 1  # the calcification (400 HU) is not blood
    true_ml = 4.0 / 3.0 * np.pi * 10.0**3 / 1000.0
    assert lesions.volume_ml[0] == pytest.approx(true_ml, rel=0.3)
    assert np.allclose(lesions.xyz_mm[0], [12.0, 6.0, 4.0], atol=3.0)
    assert lesions.abc2_ml[0] == pytest.approx(true_ml, rel=0.5)
    assert np.all(lesions.bbox_min_mm[0] < lesions.xyz_mm[0]) and np.all(lesions.bbox_max_mm[0] > lesions.xyz_mm[0])


def test_abc_over_2_of_an_ellipsoid():
    spacing = np.array([0.5, 0.5, 1.0])
    ijk = np.indices((120, 120, 60)).transpose(1, 2, 3, 0) * spacing
    mask = (((ijk - [30, 30, 30]) / [20.0, 12.0, 15.0]) ** 2).sum(-1) <= 1.0
    true_ml = 4.0 / 3.0 * np.pi * 20 * 12 * 15 / 1000.0
    assert abc_over_2_ml(mask, spacing) == pytest.approx(true_ml, rel=0.2)


def test_mri_grouping_by_entities_and_mixed_folder(tmp_path):
    loose = [tmp_path / n for n in ("sub-01_ses-1_swi.nii.gz", "sub-01_ses-1_T1w.nii.gz",
                                    "sub-01_ses-1_ce-gd_T1w.nii.gz", "sub-02_ses-1_FLAIR.nii.gz")]
    mixed_folder = tmp_path / "sub-03"
    mixed = [mixed_folder / "sub-03_swi.nii.gz", mixed_folder / "sub-04_T1w.nii.gz"]
    groups = group_mri_files(loose + mixed, {p: mixed_folder for p in mixed})
    by_subject = {g.subject: g for g in groups}
    assert set(by_subject["sub-01_ses-1"].files) == {"swi", "T1w", "ceT1w"} and not by_subject["sub-01_ses-1"].error
    assert set(by_subject["sub-02_ses-1"].files) == {"FLAIR"}
    assert "different subjects" in by_subject["sub-03"].error
    assert sequence_of("x_T2starw.nii.gz") == "T2starw" and sequence_of("x_dwi.nii.gz") is None


def test_density_refinement_and_calcification_filter():
    from cmbdet.lesions.infer import drop_calcified, refine_with_density

    hu = np.full((30, 30, 10), 32.0)
    hu[5:15, 5:15, 3:7] = 70.0  # blood, 10 x 10 voxels
    hu[20:24, 20:24, 3:7] = 300.0  # a calcification
    labels = np.zeros(hu.shape, np.int16)
    labels[6:13, 6:13, 3:7] = 1  # the network's mask, a little too small
    labels[20:24, 20:24, 3:7] = 2
    spacing = np.array([0.5, 0.5, 5.0])
    refined = refine_with_density(hu, labels, spacing)
    assert (refined == 1).sum() > (labels == 1).sum() and not ((refined == 1) & (hu < 45)).any()
    # one voxel of growth reaches one voxel of the blood's margin (the mask's rows 6..12 grow to 5..13,
    # the blood spans 5..14); 1.5 mm (3 voxels in-plane) reaches all of it and never the tissue beyond
    assert not (refined[14, 5:15, 3:7] == 1).any() and (refined[5:14, 6:13, 3:7] == 1).all()
    wider = refine_with_density(hu, labels, spacing, grow_mm=1.5)
    assert (wider == 1).sum() == 10 * 10 * 4 and (wider[5:15, 5:15, 3:7] == 1).all()
    kept, scores = drop_calcified(hu, wider, np.array([0.9, 0.8]), 0.1)
    assert kept.max() == 1 and list(scores) == [0.9] and (kept == 1).sum() == (wider == 1).sum()


def test_shipped_ct_weights():
    from cmbdet.lesions.infer import load_lesion_model
    from cmbdet.weights import SHIPPED_WEIGHTS_DIR

    path = SHIPPED_WEIGHTS_DIR / "lesions_ct.safetensors"
    assert path.stat().st_size < 20 * 2**20
    model = load_lesion_model()
    assert model.modality == "ct" and 0.0 < model.threshold < 1.0 and model.net.in_channels == 3
    mri = load_lesion_model(SHIPPED_WEIGHTS_DIR / "lesions_mri.safetensors")
    assert mri.modality == "mri" and mri.net.in_channels == 6


def test_pieces_closer_than_the_grouping_distance_are_one_lesion(tmp_path):
    from cmbdet.lesions.infer import lesions_from_probability, load_lesion_model, set_operating_point
    from cmbdet.volume import volume_from_image

    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    prob = np.zeros((40, 40, 20), np.float32)
    prob[10:15, 10:15, 8:12] = 0.9  # two blood pieces 8 mm apart (4 empty voxels of 2 mm between them)
    prob[19:24, 10:15, 8:12] = 0.9
    volume = volume_from_image(nib.Nifti1Image(np.random.default_rng(0).uniform(20, 40, prob.shape).astype(np.float32),
                                               affine))
    mask = np.ones(prob.shape, bool)
    apart = lesions_from_probability(volume, prob, affine, mask, threshold=0.5, min_ml=0.01, group_mm=5.0)
    together = lesions_from_probability(volume, prob, affine, mask, threshold=0.5, min_ml=0.01, group_mm=12.0)
    assert len(apart) == 2 and len(together) == 1
    assert together.volume_ml[0] == pytest.approx(apart.volume_ml.sum(), rel=1e-6)
    model = set_operating_point(load_lesion_model(), group_mm=12.0, refine_mm=2.5)
    again = load_lesion_model(model.save(tmp_path / "w.safetensors"))
    assert again.group_mm == 12.0 and again.refine_mm == 2.5  # the operating point is stored with the weights
    from cmbdet.weights import load_state, save_state

    state, meta = load_state(tmp_path / "w.safetensors")
    del meta["refine_mm"]  # weights written before refine_mm existed: one voxel, as then
    assert load_lesion_model(save_state(tmp_path / "old.safetensors", state, meta)).refine_mm == 0.0
    assert load_lesion_model().group_mm == 15.0  # the shipped CT point is 15 mm


def test_calcification_is_judged_before_the_margins_are_redrawn():
    """A calcification the network marks (dense core, blood-like partial-volume rim) is dropped by the
    filter although the density refinement alone would keep only its rim; blood next to it stays."""
    from cmbdet.lesions.ct import CTWorkingImage
    from cmbdet.lesions.infer import ct_lesions_from_probability, load_lesion_model, set_operating_point
    from cmbdet.volume import volume_from_image

    hu = np.full((40, 40, 20), 32.0, np.float32)
    hu[:2] = hu[-2:] = -1000.0  # air, so that it reads as a CT
    hu[7:15, 7:15, 9:11] = 60.0  # the calcification's partial-volume rim
    hu[9:13, 9:13, 9:11] = 400.0  # its dense core (more than 10 % of what the network marks)
    hu[24:32, 24:32, 6:14] = 65.0  # a hematoma
    volume = volume_from_image(nib.Nifti1Image(hu, np.diag([1.0, 1.0, 1.0, 1.0])))
    prob = np.zeros(hu.shape, np.float32)
    prob[7:15, 7:15, 9:11] = 0.9  # two slices thick: an erosion leaves no core, the refinement only the rim
    prob[24:32, 24:32, 6:14] = 0.9
    work = CTWorkingImage(hu=volume.data, mask=np.ones(hu.shape, bool), affine=volume.affine)
    model = set_operating_point(load_lesion_model(), threshold=0.5, min_ml=0.01, refine="on", refine_mm=0.0,
                                max_dense=0.1, group_mm=2.0)
    found = ct_lesions_from_probability(volume, work, prob, model)
    assert len(found) == 1 and found.volume_ml[0] == pytest.approx(8 * 8 * 8 / 1000.0)
    assert np.allclose(found.xyz_mm[0], [27.5, 27.5, 9.5])


def test_a_lesion_the_refinement_would_empty_keeps_the_networks_mask():
    """A one-slice mask on thick slices with no blood density: erosion leaves no core and no voxel is
    45-100 HU; the lesion is kept as the network drew it instead of vanishing from the numbering."""
    from cmbdet.lesions.infer import refine_with_density

    hu = np.full((20, 20, 6), 40.0)
    hu[2:6, 2:6, 1:4] = 70.0
    labels = np.zeros(hu.shape, np.int16)
    labels[2:6, 2:6, 1:4] = 1  # a blood-dense lesion
    labels[12:15, 12:15, 3] = 2  # one slice, 40 HU
    refined = refine_with_density(hu, labels, np.array([0.5, 0.5, 5.0]))
    assert (refined[2:6, 2:6, 1:4] == 1).all() and ((refined == 2) == (labels == 2)).all()


def test_a_lesion_on_a_slab_gets_unknown_region_and_the_reason():
    # 12 slices of 2 mm: too little brain to anchor MARS regions; the lesion is measured all the same
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    data = np.random.default_rng(0).normal(40.0, 3.0, (80, 90, 12)).astype(np.float32)
    volume = volume_from_image(nib.Nifti1Image(data, affine))
    labels = np.zeros(volume.shape, np.int16)
    labels[40:45, 40:45, 4:8] = 1
    brain = np.zeros(volume.shape, bool)
    brain[10:70, 10:80, :] = True
    lesions = measure_lesions(volume, labels, np.array([0.9]), brain, volume.affine)
    assert list(lesions.region) == ["unknown"] and list(lesions.ivh) == [0]
    assert len(lesions.notes) == 1 and "partial coverage" in lesions.notes[0] and "ivh=0" in lesions.notes[0]
    assert lesions.volume_ml[0] == pytest.approx(100 * 8 / 1000)


def _mni_ct_with_ventricles(path, blood_ml: float):
    """A CT in MNI space (2 mm; anchor = identity): brain 32 HU, the atlas's lateral / third ventricles
    CSF (5 HU), the lowest ``blood_ml`` of the ventricles filled with blood (60 HU)."""
    from cmbdet.anatomy import mni_maps

    maps = mni_maps(2)
    hu = np.where(maps.brain, 32.0, -1000.0).astype(np.float32)
    ventricles = maps.d_vent < 1.0
    hu[ventricles] = 5.0
    cells = np.argwhere(ventricles)
    lowest = cells[np.argsort(cells[:, 2], kind="stable")][: int(round(blood_ml / 0.008))]
    hu[tuple(lowest.T)] = 60.0
    save_ct(path, hu, maps.affine)
    return load_ct_volume(path), lowest


def test_blood_in_the_ventricles_flags_the_lesion_beside_it(tmp_path):
    from cmbdet.lesions.result import BLOOD_HU, VENTRICULAR_REACH_MM, intraventricular
    from cmbdet.regions import MniAnchor

    anchor = MniAnchor(np.eye(4))
    for blood_ml, expected in ((3.0, [1, 0]), (0.5, [0, 0])):
        volume, blood = _mni_ct_with_ventricles(tmp_path / f"head_{blood_ml}.nii.gz", blood_ml)
        labels = np.zeros(volume.shape, np.int16)
        # lesion 1: a hematoma whose edge is 4 mm lateral to the ventricular blood, outside the
        # ventricles itself (its mask and one voxel around it are not counted as ventricular blood)
        near = blood[np.argmax(np.abs(blood[:, 0] - blood[:, 0].mean()))].copy()
        near[0] += 3 * int(np.sign(near[0] - blood[:, 0].mean()) or 1)
        labels[near[0] - 1:near[0] + 2, near[1] - 1:near[1] + 2, near[2] - 1:near[2] + 2] = 1
        labels[blood[:, 0], blood[:, 1], blood[:, 2]] = 0
        # lesion 2: far away (frontal lobe)
        far = np.rint(np.linalg.solve(volume.affine, [30.0, 50.0, 30.0, 1.0])[:3]).astype(int)
        labels[far[0] - 1:far[0] + 2, far[1] - 1:far[1] + 2, far[2] - 1:far[2] + 2] = 2
        mask_only = intraventricular(volume, labels, 2, anchor)
        with_blood = intraventricular(volume, labels, 2, anchor, blood_hu=BLOOD_HU)
        assert mask_only.tolist() == [0, 0]  # neither mask reaches 10 % into the ventricles
        assert with_blood.tolist() == expected, (blood_ml, with_blood)
    assert VENTRICULAR_REACH_MM >= 4.0


def test_a_lesions_own_voxels_are_not_its_ventricular_blood(tmp_path):
    # the hematoma's mask holds all the blood in the ventricles but lies mostly outside them (< 10 %):
    # through an approximate atlas fit that is a hematoma beside a ventricle, not one extending into it
    from cmbdet.lesions.result import BLOOD_HU, intraventricular
    from cmbdet.regions import MniAnchor

    volume, blood = _mni_ct_with_ventricles(tmp_path / "head.nii.gz", 3.0)
    labels = np.zeros(volume.shape, np.int16)
    corner = blood.min(axis=0)
    labels[corner[0] - 16:corner[0], corner[1]:corner[1] + 16, corner[2]:corner[2] + 16] = 1
    labels[blood[:, 0], blood[:, 1], blood[:, 2]] = 1
    assert (labels == 1).sum() > 10 * len(blood)
    assert intraventricular(volume, labels, 1, MniAnchor(np.eye(4)), blood_hu=BLOOD_HU).tolist() == [0]
