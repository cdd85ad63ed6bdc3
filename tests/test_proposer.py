"""Stage 1: working grid, likelihood peaks -> world coordinates, targets, seeded training."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from cmbdet.preprocess import brain_mask, prepare_working_image, resample_to_spacing
from cmbdet.proposer.infer import peaks_to_candidates
from cmbdet.proposer.train import PreparedScan, heatmap_target, train_proposer
from cmbdet.volume import volume_from_image
from tests.conftest import ellipsoid_head


def test_resampling_keeps_world_positions():
    affine = np.array([[0.45, 0, 0, -50], [0, 0.45, 0, -60], [0, 0, 3.0, -20], [0, 0, 0, 1]])
    data = np.zeros((200, 220, 20), np.float32)
    data[100, 110, 10] = 1000.0  # a point at world (-5, -10.5, 10)
    out, new_affine = resample_to_spacing(data, affine, 1.0)
    peak = np.unravel_index(np.argmax(out), out.shape)
    world = nib.affines.apply_affine(new_affine, peak)
    np.testing.assert_allclose(world, [-5, -10.5, 10], atol=1.0)
    corners = [[0, 0, 0], np.array(data.shape) - 1]
    new_corners = [[0, 0, 0], np.array(out.shape) - 1]
    np.testing.assert_allclose(nib.affines.apply_affine(affine, corners),
                               nib.affines.apply_affine(new_affine, new_corners), atol=1e-6)


def test_peaks_become_candidates_at_their_world_position_with_size():
    affine = np.array([[-1.0, 0, 0, 40], [0, 1.0, 0, -30], [0, 0, 1.0, -10], [0, 0, 0, 1]])
    prob = np.zeros((40, 40, 30), np.float32)
    prob += heatmap_target(prob.shape, np.array([[10.0, 12.0, 8.0], [30.0, 25.0, 20.0]]), np.array([1.5, 3.0]))
    found = peaks_to_candidates(prob, affine, max_candidates=10, min_score=0.1)
    assert len(found) == 2
    expected = nib.affines.apply_affine(affine, [[10, 12, 8], [30, 25, 20]])
    order = np.argsort(found.xyz_mm[:, 0])[::-1]
    np.testing.assert_allclose(found.xyz_mm[order], expected, atol=0.3)
    assert found.diameter_mm[order][1] > found.diameter_mm[order][0]  # the 3-voxel-radius blob is larger
    assert np.all(found.stage_scores["stage1"] == found.score)


def test_brain_mask_excludes_scalp_and_keeps_dark_spots():
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-96, -112, -66]
    head = ellipsoid_head(affine, shape=(96, 112, 66))
    mask = brain_mask(head, np.array([2.0, 2.0, 2.0]))
    world = nib.affines.apply_affine(affine, np.argwhere(np.ones(head.shape, bool)))
    r = np.sqrt((world[:, 0] / 60) ** 2 + (world[:, 1] / 75) ** 2 + (world[:, 2] / 55) ** 2).reshape(head.shape)
    assert mask[r < 0.75].mean() > 0.99, "brain inside"
    assert mask[r > 0.93].mean() < 0.01, "no skull or scalp"
    spot = np.rint(nib.affines.apply_affine(np.linalg.inv(affine), [10, 5, 2])).astype(int)
    assert mask[tuple(spot)], "a dark CMB-like spot inside the brain stays in the mask"


def test_working_image_is_normalized_whatever_the_scale():
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    affine[:3, 3] = [-96, -112, -66]
    head = ellipsoid_head(affine, shape=(128, 150, 44))
    medians = []
    for scale in (1e-4, 1.0, 4095 / head.max()):
        working = prepare_working_image(volume_from_image(nib.Nifti1Image(head * scale, affine)), 1.0)
        medians.append(float(np.median(working.image[working.mask])))
    np.testing.assert_allclose(medians, 1.0, atol=0.1)


def _toy_scans(rng: np.random.Generator) -> list[PreparedScan]:
    scans = []
    for n in range(2):
        image = np.clip(rng.normal(1.0, 0.05, (48, 48, 48)), 0, None).astype(np.float16)
        centres = np.array([[20.0, 24.0, 24.0], [30.0, 10.0, 35.0]])
        image[tuple(np.rint(centres).astype(int).T)] = 0.1
        scans.append(PreparedScan(f"s{n}", image, np.ones(image.shape, bool), centres, np.array([1.5, 2.0]),
                                  np.array([[10.0, 10.0, 10.0]])))
    return scans


def test_training_is_reproducible_for_a_seed():
    scans = _toy_scans(np.random.default_rng(0))
    first = train_proposer(scans, np.random.default_rng(7), steps=3, batch_size=2, patch=32, width=4, log=lambda _: 0)
    second = train_proposer(scans, np.random.default_rng(7), steps=3, batch_size=2, patch=32, width=4,
                            log=lambda _: 0)
    for (name, a), b in zip(first.net.state_dict().items(), second.net.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    third = train_proposer(scans, np.random.default_rng(8), steps=3, batch_size=2, patch=32, width=4, log=lambda _: 0)
    assert not torch.equal(first.net.head.weight, third.net.head.weight)


def test_augmentation_moves_image_and_target_together():
    """Flips, axis swaps and rotations must keep the heat-map peak on the dark lesion."""
    from scipy import ndimage

    from cmbdet.proposer.train import augment

    size, centre = 32, np.array([10.0, 20.0, 14.0])
    grid = np.indices((size,) * 3).astype(float)
    dist = np.sqrt(sum((grid[a] - centre[a]) ** 2 for a in range(3)))
    image = np.where(dist <= 2.5, 0.1, 1.0).astype(np.float32)
    target = heatmap_target((size,) * 3, centre[None], np.array([2.5]))
    rng = np.random.default_rng(3)
    for _ in range(40):
        moved_image, moved_target = augment(image, target, rng)
        peak = np.array(np.unravel_index(np.argmax(moved_target), moved_target.shape))
        darkest = np.array(np.unravel_index(np.argmin(ndimage.uniform_filter(moved_image, 5)), moved_image.shape))
        assert np.linalg.norm(peak - darkest) <= 1.8
        assert moved_target.max() > 0.6


def test_thick_slices_spread_a_thin_lesion_over_neighbouring_slices():
    from cmbdet.proposer.train import _thick_slices

    image = np.ones((8, 8, 30), dtype=np.float32)
    image[:, :, 15] = 0.0
    thick = _thick_slices(image, 3, axis=2)
    assert thick.shape == image.shape
    assert thick[0, 0, 15] > 0.5  # partial volume: one dark slice in three
    assert thick[0, 0, 13:18].min() < 0.9 and thick[0, 0, 5] == 1.0
    np.testing.assert_allclose(thick.mean(), image.mean(), atol=0.01)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_six_mm_slices_in_any_plane_dilute_a_small_lesion(axis):
    from cmbdet.proposer.train import THICKEST_SLICE_VOXELS, _thick_slices

    assert THICKEST_SLICE_VOXELS == 6  # the thickest clinical GRE slices, 6 mm on the 1 mm grid
    image = np.ones((36, 36, 36), dtype=np.float32)
    image[16:18, 16:18, 16:18] = 0.0  # a 2 mm microbleed
    thick = _thick_slices(image, 6, axis=axis)
    assert thick.shape == image.shape
    assert 0.5 < thick[17, 17, 17] < 0.9  # partial volume: two dark slices of six, interpolated
    other = [a for a in range(3) if a != axis][0]
    assert np.take(thick, 0, axis=other).min() == 1.0  # nothing spreads in-plane


def test_mirror_average_is_the_mean_of_both_mirror_images():
    from cmbdet.preprocess import WorkingImage
    from cmbdet.proposer.infer import likelihood_map, new_proposer

    torch.manual_seed(0)
    proposer = new_proposer(width=4, spacing_mm=1.0, device="cpu")
    image = np.random.default_rng(0).uniform(0.5, 1.5, (24, 20, 16)).astype(np.float32)
    mask = np.ones(image.shape, bool)  # whole grid: no crop, no padding
    working = WorkingImage(image, mask, np.eye(4))
    plain = likelihood_map(working, proposer, mirror_average=False)
    mirrored = likelihood_map(WorkingImage(image[::-1].copy(), mask, np.eye(4)), proposer, mirror_average=False)[::-1]
    averaged = likelihood_map(working, proposer, mirror_average=True)
    np.testing.assert_allclose(averaged, (plain + mirrored) / 2, atol=1e-5)
    assert not np.allclose(plain, mirrored, atol=1e-3)  # the two views do differ


def test_target_width_floor_widens_only_small_cmbs():
    """``min_sigma_vox`` sets the blob width of small CMBs (their share of the loss); large ones keep r / ratio."""
    centres = np.array([[8.0, 8.0, 8.0], [24.0, 24.0, 24.0]])
    radii = np.array([0.5, 4.5])  # a 1 mm and a 9 mm CMB on a 1 mm grid
    narrow = heatmap_target((32,) * 3, centres, radii, min_sigma_vox=0.7)
    wide = heatmap_target((32,) * 3, centres, radii, min_sigma_vox=1.2)
    small, large = (slice(0, 16),) * 3, (slice(16, 32),) * 3
    assert (wide[small] > 0.5).sum() > 2 * (narrow[small] > 0.5).sum()
    np.testing.assert_array_equal(wide[large], narrow[large])
    assert wide.max() == narrow.max() == 1.0


def _likelihood_peaks_at(monkeypatch, peaks: dict) -> None:
    """Make stage 1's likelihood map (as mining calls it) zero but for ``peaks``: voxel -> value."""
    import cmbdet.proposer.train as train

    def fake_map(working, proposer, **_):
        prob = np.zeros(working.image.shape, np.float32)
        for ijk, value in peaks.items():
            prob[ijk] = value
        return prob

    monkeypatch.setattr(train, "likelihood_map", fake_map)


def test_mined_hard_negatives_are_the_proposer_s_false_peaks_away_from_cmbs(monkeypatch):
    """Mining keeps the candidates > 6 mm from every CMB (a second peak on a microbleed is no negative)
    and leaves the input scans untouched; "hard" patches are then centred on them."""
    import cmbdet.proposer.train as train
    from cmbdet.proposer.infer import new_proposer

    scan = _toy_scans(np.random.default_rng(0))[0]  # CMBs at (20, 24, 24) and (30, 10, 35)
    peaks = {(21, 24, 24): 0.9, (20, 28, 24): 0.8, (8, 40, 8): 0.7, (40, 40, 12): 0.6}  # 2 on the CMB, 2 far
    _likelihood_peaks_at(monkeypatch, peaks)
    mined = train.mine_hard_negatives([scan], new_proposer(width=4, device="cpu"), per_scan=10, log=lambda _: 0)
    found = mined[0].hard_negative_ijk
    np.testing.assert_allclose(found[np.argsort(found[:, 0])], [[8, 40, 8], [40, 40, 12]], atol=0.5)
    assert len(scan.hard_negative_ijk) == 0
    rng = np.random.default_rng(3)
    mined[0].image[8, 40, 8] = mined[0].image[40, 40, 12] = 7.0  # mark the two mined points
    for _ in range(5):  # a "hard" patch (centre jittered <= 32/6 voxels) holds one of them
        image, target = train.sample_patch(mined[0], rng, 32, "hard")
        assert (image == 7.0).sum() >= 1
    with pytest.raises(ValueError, match="no scan has mined hard negatives"):
        train.train_proposer([scan], np.random.default_rng(0), steps=1, batch_size=2, patch=32, width=4,
                             hard_negative_fraction=0.25, log=lambda _: 0)


def test_hard_negative_patches_are_drawn_at_the_asked_share(monkeypatch):
    import cmbdet.proposer.train as train

    scans = [train.PreparedScan(**{**s.__dict__, "hard_negative_ijk": np.array([[24.0, 24.0, 24.0]])})
             for s in _toy_scans(np.random.default_rng(0))]
    kinds = [k.split(":")[0] for k in _patch_kinds(monkeypatch, scans, 0, 25, 8, hard_negative_fraction=0.25)]
    share = {k: kinds.count(k) / len(kinds) for k in ("cmb", "hard", "mimic", "brain")}
    assert abs(share["cmb"] - 0.5) < 0.08 and abs(share["hard"] - 0.25) < 0.08
    assert abs(share["mimic"] - 0.125) < 0.06 and abs(share["brain"] - 0.125) < 0.06


def test_mining_clearance_is_in_mm_and_grows_with_the_microbleed(monkeypatch):
    """On a 2 mm grid: a peak 4 mm from a 3 mm-radius CMB is on it (dropped), 8 mm away is a negative;
    one 7.2 mm from a 6 mm-radius CMB is within its radius + 2 mm (dropped)."""
    import cmbdet.proposer.train as train
    from cmbdet.proposer.infer import new_proposer

    image = np.ones((48, 48, 48), np.float16)
    cmbs = np.array([[20.0, 24.0, 24.0], [30.0, 10.0, 35.0]])
    scan = train.PreparedScan("s", image, np.ones(image.shape, bool), cmbs, np.array([1.5, 3.0]), np.zeros((0, 3)),
                              spacing_mm=2.0)
    _likelihood_peaks_at(monkeypatch, {(20, 22, 24): 0.9, (20, 28, 24): 0.8, (30, 13, 37): 0.7, (8, 40, 8): 0.6})
    found = train.mine_hard_negatives([scan], new_proposer(width=4, spacing_mm=2.0, device="cpu"),
                                      log=lambda _: 0)[0].hard_negative_ijk
    np.testing.assert_allclose(found[np.argsort(found[:, 0])], [[8, 40, 8], [20, 28, 24]], atol=0.5)
    with pytest.raises(ValueError, match="prepared at 2.0 mm"):
        train.mine_hard_negatives([scan], new_proposer(width=4, spacing_mm=1.0, device="cpu"), log=lambda _: 0)


def _patch_kinds(monkeypatch, scans, seed, steps, batch_size, **kwargs):
    import cmbdet.proposer.train as train

    kinds = []
    real = train.sample_patch
    monkeypatch.setattr(train, "sample_patch", lambda scan, rng, patch, kind, *a: kinds.append(f"{kind}:{scan.subject}")
                        or real(scan, rng, patch, kind, *a))
    train.train_proposer(scans, np.random.default_rng(seed), steps=steps, batch_size=batch_size, patch=16, width=2,
                         log=lambda _: 0, **kwargs)
    return kinds


def test_without_hard_negatives_the_batches_are_drawn_as_before_mining_existed(monkeypatch):
    """Recorded with the code before hard-negative mining (commit 889b82f): the same seed must draw the
    same patch kinds from the same scans, also when some or all scans have no CMB."""
    one, bare = _toy_scans(np.random.default_rng(0))
    bare = PreparedScan(bare.subject, bare.image, bare.mask, np.zeros((0, 3)), np.zeros(0), np.zeros((0, 3)))
    assert _patch_kinds(monkeypatch, [one, bare], 5, 3, 8) == [
        "brain:s1", "mimic:s0", "mimic:s0", "cmb:s0", "brain:s0", "brain:s1", "brain:s0", "cmb:s0", "cmb:s0",
        "mimic:s0", "mimic:s0", "mimic:s0", "cmb:s0", "cmb:s0", "cmb:s0", "cmb:s0", "cmb:s0", "mimic:s0", "cmb:s0",
        "cmb:s0", "mimic:s0", "mimic:s0", "brain:s1", "cmb:s0"]
    no_cmb = [PreparedScan(s.subject, s.image, s.mask, np.zeros((0, 3)), np.zeros(0), s.mimic_ijk)
              for s in _toy_scans(np.random.default_rng(0))]
    assert _patch_kinds(monkeypatch, no_cmb, 5, 2, 6) == [
        "brain:s1", "mimic:s0", "mimic:s0", "brain:s0", "mimic:s1", "mimic:s0", "brain:s1", "mimic:s1", "brain:s0",
        "mimic:s0", "mimic:s0", "mimic:s1"]
