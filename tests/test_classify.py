"""The crop classifiers: lesion features (crops + mirp radiomics), the LASSO + SVM chain, training
and weights round trips, and `cmbdet classify` end to end on tiny scans (contracts, not accuracy:
the weights here are trained for a step or two on synthetic feature sets)."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from cmbdet.classify.features import CROP_PIXELS, MRI_SEQUENCES, lesion_features
from cmbdet.classify.linear import LinearChain, _folds, fit_lasso_svm
from cmbdet.classify.model import load_classifier
from cmbdet.classify.run import CLASSIFICATION_COLUMNS, COUNT_COLUMNS
from cmbdet.classify.samples import SampleSet, build_sample_set, remeasured
from cmbdet.classify.train import (
    choose_threshold,
    cross_site_contrastive,
    model_scores_from_samples,
    train_expansion,
    train_hbm,
)
from cmbdet.cli import main
from cmbdet.lesions.ct import load_ct_volume
from cmbdet.lesions.infer import classical_ct_lesions
from cmbdet.lesions.result import lesions_from_labels
from cmbdet.volume import volume_from_image
from tests.conftest import ellipsoid_head
from tests.test_lesions import LPS_TILTED, save_ct, tiny_ct_head
from tests.test_report import report_links, total_row


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _synthetic(task: str, n_subjects: int = 16, seed: int = 0) -> SampleSet:
    """Lesions whose label shows in the crop (a brighter disc) and in one radiomics column."""
    rng = np.random.default_rng(seed)
    crops, radiomics, labels, subjects, sites, present = [], [], [], [], [], []
    if task == "expansion":
        names = tuple(f"ct.f{i}" for i in range(6))
    else:
        names = ("shape.volume",) + tuple(f"{seq}.f{i}" for seq in MRI_SEQUENCES for i in range(2))
    yy, xx = np.mgrid[:CROP_PIXELS, :CROP_PIXELS] - CROP_PIXELS / 2
    disc = (yy**2 + xx**2 < 100).astype(np.float32)
    for s in range(n_subjects):
        label = s % 2
        for _ in range(1 + s % 2):
            crop = rng.normal(0.3, 0.05, (6, CROP_PIXELS, CROP_PIXELS)).astype(np.float32)
            crop[:5] += disc * (0.6 if label else 0.2)
            crop[5] = disc
            crops.append(crop)
            row = rng.normal(0, 1, len(names))
            row[1] += 2.0 * label
            radiomics.append(row)
            labels.append(label)
            subjects.append(f"sub-{s:02d}")
            sites.append(f"site{s % 3}")
            present.append(np.ones(5))
    n = len(labels)
    return SampleSet(np.stack(crops), np.stack(radiomics), names, np.stack(present), rng.uniform(1, 30, n),
                     np.ones(n, int), np.array(labels), np.array(subjects), np.array(sites), np.ones(n, int),
                     {f"sub-{s:02d}": s % 2 for s in range(n_subjects)},
                     {f"sub-{s:02d}": f"site{s % 3}" for s in range(n_subjects)})


@pytest.fixture(scope="module")
def expansion_weights(tmp_path_factory):
    torch.manual_seed(0)
    model, report = train_expansion(_synthetic("expansion"), np.random.default_rng(0), val_fraction=0.25, width=4,
                                    epochs=2, ssl_epochs=1, folds=2)
    assert 0.0 <= model.threshold <= 1.0 and "val_auc_fused" in report
    # three sites: one CNN per site left out (the synthetic set's sites stand for phantom families)
    assert report["cross_fitting"] == "by family" and len(model.net.members) == 3
    path = tmp_path_factory.mktemp("cw") / "classifier_expansion.safetensors"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def hbm_weights(tmp_path_factory):
    torch.manual_seed(0)
    model, report = train_hbm(_synthetic("hbm"), np.random.default_rng(0), val_fraction=0.25, width=4, epochs=2)
    assert "val_accuracy" in report
    path = tmp_path_factory.mktemp("cw") / "classifier_hbm.safetensors"
    model.save(path)
    return path


# --- features ---------------------------------------------------------------------------------------


def test_expansion_features_of_a_ct_blob(tmp_path):
    save_ct(tmp_path / "ct.nii.gz", tiny_ct_head(LPS_TILTED, blob_radius_mm=10.0), LPS_TILTED)
    volume = load_ct_volume(tmp_path / "ct.nii.gz")
    lesions = classical_ct_lesions(volume)
    assert len(lesions) >= 1
    features = lesion_features("expansion", volume, {"ct": volume.data}, lesions)
    blob = features[int(np.argmax([f.volume_ml for f in features]))]
    assert blob.crop.shape == (6, CROP_PIXELS, CROP_PIXELS)
    centre = CROP_PIXELS // 2
    assert blob.crop[5, centre, centre] > 0.5  # the mask is centred
    assert 0.55 < blob.crop[2, centre - 1:centre + 2, centre - 1:centre + 2].mean() < 0.85  # 70 HU in a 0-100 window
    assert np.isfinite(blob.radiomics).all() and blob.names[0].startswith("ct.")
    assert "ct.morph_volume" in blob.names
    volume_mm3 = blob.radiomics[blob.names.index("ct.morph_volume")]
    assert volume_mm3 / 1000.0 == pytest.approx(blob.volume_ml, rel=0.35)


def test_hbm_features_keep_their_layout_when_sequences_are_missing():
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -40.0
    shape = (40, 40, 40)
    ijk = np.indices(shape).reshape(3, -1).T * 2.0 - 40.0
    inside = (np.linalg.norm(ijk, axis=1) <= 6.0).reshape(shape)
    rng = np.random.default_rng(0)
    brain = rng.normal(1.0, 0.05, shape).astype(np.float32)
    volume = volume_from_image(nib.Nifti1Image(brain, affine))
    lesions = lesions_from_labels(volume, inside.astype(np.int16))
    dark = np.where(inside, 0.3, brain).astype(np.float32)
    full = lesion_features("hbm", volume, {"swi": dark, "T1w": brain, "ceT1w": brain, "T2w": brain,
                                           "FLAIR": brain * 1.2}, lesions)[0]
    part = lesion_features("hbm", volume, {"swi": dark, "FLAIR": brain * 1.2}, lesions)[0]
    assert part.names == full.names
    assert part.present.tolist() == [1, 0, 0, 0, 1]
    assert np.all(part.crop[1:4] == 0) and part.crop[0].any()
    t1 = [i for i, name in enumerate(part.names) if name.startswith("T1w.")]
    assert t1 and np.all(part.radiomics[t1] == 0) and np.any(full.radiomics[t1] != 0)
    centre = CROP_PIXELS // 2
    assert part.crop[0, centre, centre] < 0.5  # dark on SWI relative to the tissue around it


# --- fitting pieces -----------------------------------------------------------------------------------


def test_lasso_svm_chain_separates_and_round_trips():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (120, 8))
    y = (x[:, 2] + 0.3 * rng.normal(0, 1, 120) > 0).astype(int)
    chain = fit_lasso_svm(x, y, np.arange(120) // 2, rng)
    assert chain.selected[2]
    p = chain.probability(x)
    assert p[y == 1].mean() > 0.7 and p[y == 0].mean() < 0.3
    again = LinearChain.from_arrays(chain.to_arrays("fused"), "fused")
    assert np.allclose(again.probability(x), p)
    fits = []
    for global_seed in (1, 2):  # the chain depends on its generator only, not on numpy's global state
        np.random.seed(global_seed)
        fits.append(fit_lasso_svm(x, y, np.arange(120) // 2, np.random.default_rng(5)))
    assert np.array_equal(fits[0].selected, fits[1].selected) and np.array_equal(fits[0].w, fits[1].w)


def test_choices_leave_one_family_out_when_there_are_several():
    rng = np.random.default_rng(1)
    y = np.tile([0, 1], 60)
    subjects = np.arange(120) // 2
    families = np.repeat(["ct-a", "ct-c"], 60)
    folds = _folds(y, subjects, 0, domains=families)
    assert sorted(tuple(sorted(set(families[test].tolist()))) for _, test in folds) == [("ct-a",), ("ct-c",)]
    assert all(not set(families[train]) & set(families[test]) for train, test in folds)
    assert len(_folds(y, subjects, 0)) == 5  # one family: subject folds
    x = rng.normal(0, 1, (120, 4))
    x[:, 0] += 1.5 * y
    chain = fit_lasso_svm(x, y, subjects, rng, domains=families)
    assert chain.selected[0] and chain.probability(x)[y == 1].mean() > chain.probability(x)[y == 0].mean() + 0.3
    one_site = _synthetic("expansion", n_subjects=12)
    one_site.sites[:] = "ct-a"
    model, report = train_expansion(one_site, np.random.default_rng(0), val_fraction=0.0, width=4, epochs=1,
                                    ssl_epochs=0, folds=2)
    assert report["cross_fitting"] == "by subject" and len(model.net.members) == 2


def test_threshold_choice_and_cross_site_term():
    scores = np.array([0.1, 0.2, 0.35, 0.6, 0.8, 0.9])
    labels = np.array([0, 0, 0, 1, 1, 1])
    assert 0.35 < choose_threshold(scores, labels, "accuracy") < 0.6
    assert 0.35 < choose_threshold(scores, labels, "youden") < 0.6
    # two separate best regions: the threshold lies inside one of them, never between
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    labels = np.array([0, 0, 0, 0, 0, 1, 0, 1])  # best (7/8) above 0.5 or above 0.7, worse between
    cut = choose_threshold(scores, labels, "accuracy")
    assert ((scores >= cut) == labels.astype(bool)).mean() == 0.875
    labels_t = torch.tensor([0, 0, 1, 1])
    sites = torch.tensor([0, 1, 0, 1])
    clustered = torch.tensor([[1.0, 0.0], [1.0, 0.05], [0.0, 1.0], [0.05, 1.0]])
    mixed = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.05], [0.05, 1.0]])
    assert cross_site_contrastive(clustered, labels_t, sites) < cross_site_contrastive(mixed, labels_t, sites)


def test_weights_round_trip(expansion_weights, hbm_weights):
    for task, path in (("expansion", expansion_weights), ("hbm", hbm_weights)):
        samples = _synthetic(task, n_subjects=4, seed=1)
        model = load_classifier(task, path)
        again = load_classifier(task, path)
        p = model_scores_from_samples(model, samples)
        assert p.shape == (len(samples),) and np.all((p >= 0) & (p <= 1))
        assert np.allclose(p, model_scores_from_samples(again, samples))
    with pytest.raises(Exception, match="not hbm classifier weights"):
        load_classifier("hbm", expansion_weights)


# --- the command ----------------------------------------------------------------------------------------


@pytest.fixture()
def ct_folder(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    save_ct(folder / "sub-01_ct.nii.gz", tiny_ct_head(LPS_TILTED, blob_radius_mm=10.0), LPS_TILTED)
    ras = np.array([[2.5, 0, 0, -75], [0, 2.5, 0, -88], [0, 0, 5.0, -60], [0, 0, 0, 1]])
    save_ct(folder / "sub-02_ct.nii.gz", tiny_ct_head(ras, shape=(60, 70, 24), blob_mm=(-20.0, 10.0, 0.0),
                                                       blob_radius_mm=8.0), ras, intercept=0.0)
    return folder


def test_classify_reuses_lesions_writes_tables_cams_and_resumes(ct_folder, expansion_weights, tmp_path):
    lesions_out = tmp_path / "lesions"
    assert main(["lesions", str(ct_folder), "-o", str(lesions_out), "--classical", "--no-pictures", "--quiet"]) == 0
    (ct_folder / "broken.nii.gz").write_bytes(b"not a nifti")
    out = tmp_path / "cls"
    args = ["classify", str(ct_folder), "--task", "expansion", "--weights", str(expansion_weights),
            "--lesions", str(lesions_out), "-o", str(out), "--cam", "--compare", "--quiet"]
    assert main(args) == 1  # the broken file fails, the others are written
    counts = {r["subject"]: r for r in _rows(out / "counts.csv")}
    assert list(next(iter(counts.values())).keys()) == list(COUNT_COLUMNS)
    assert counts["broken"]["status"] == "error" and "broken.nii.gz" in counts["broken"]["message"]
    rows = _rows(out / "classification.csv")
    assert list(rows[0].keys()) == list(CLASSIFICATION_COLUMNS)
    found = {r["subject"]: int(r["n_lesions"]) for r in _rows(lesions_out / "counts.csv")}
    for subject in ("sub-01", "sub-02"):
        assert counts[subject]["status"] == "ok" and int(counts[subject]["n_lesions"]) == found[subject]
        mine = [r for r in rows if r["subject"] == subject]
        per_lesion = [r for r in mine if r["lesion_id"]]
        subject_row = [r for r in mine if not r["lesion_id"]]
        assert len(per_lesion) == found[subject] and len(subject_row) == 1
        for r in mine:
            assert r["label"] in ("expands", "stable") and 0.0 <= float(r["probability"]) <= 1.0
            assert float(r["threshold"]) == pytest.approx(load_classifier("expansion", expansion_weights).threshold,
                                                          abs=1e-4)
            assert (r["label"] == "expands") == (float(r["probability"]) >= float(r["threshold"]))
        # the subject row speaks for the largest hematoma
        largest = max(_rows(lesions_out / "lesions.csv"), key=lambda r: (r["subject"] == subject,
                                                                         float(r["volume_ml"])))
        assert subject_row[0]["probability"] == next(r["probability"] for r in per_lesion
                                                     if r["lesion_id"] == largest["lesion_id"])
        assert (out / subject / "cam" / f"{subject}_lesion-1_cam.png").stat().st_size > 1000
    compare = _rows(out / "classification_compare.csv")
    assert {r["model"] for r in compare} == {"fused", "deep", "radiomics"}
    page, urls = report_links(out)  # the cohort page shows the CAM pictures and links the tables
    assert {"classification.csv", "classification_compare.csv", "counts.csv",
            "sub-02/cam/sub-02_lesion-1_cam.png"} <= set(urls)
    assert '<tr class="error"><td>broken</td>' in page
    total = total_row(page)  # lesions add up; labels, tasks and probabilities get no total
    assert int(total["n_lesions"]) == sum(int(counts[s]["n_lesions"]) for s in ("sub-01", "sub-02"))
    assert total["task"] == total["label"] == total["probability"] == ""
    # a rerun skips what is done (the record is not rewritten) and redoes the failed input only
    record = out / "sub-01" / "sub-01_classify-record.json"
    stamp = record.stat().st_mtime_ns
    assert main(args) == 1
    assert record.stat().st_mtime_ns == stamp
    # other settings (no CAMs, no comparison) are refused
    assert main([a for a in args if a not in ("--cam", "--compare")]) == 2


def test_classify_localizes_when_no_lesions_folder_and_checks_modality(ct_folder, expansion_weights, hbm_weights,
                                                                      tmp_path):
    from cmbdet.lesions.infer import LesionModel
    from cmbdet.lesions.model import LesionNet

    torch.manual_seed(0)
    lesion_weights = tmp_path / "lesions_ct.safetensors"
    LesionModel(net=LesionNet(3, 4), modality="ct", threshold=0.5).save(lesion_weights)
    out = tmp_path / "cls"
    code = main(["classify", str(ct_folder / "sub-01_ct.nii.gz"), "--task", "expansion", "--weights",
                 str(expansion_weights), "--lesion-weights", str(lesion_weights), "-o", str(out), "--quiet"])
    assert code == 0
    sidecar = json.loads((out / "sub-01" / "sub-01_desc-hemorrhage_dseg.json").read_text())
    assert sidecar["method"] == "network"
    n = int(_rows(out / "counts.csv")[0]["n_lesions"])
    assert len([r for r in _rows(out / "classification.csv") if r["lesion_id"]]) == n
    # hbm reads MRI: a CT input gets an error row naming it, not a crash
    out2 = tmp_path / "cls2"
    code = main(["classify", str(ct_folder / "sub-01_ct.nii.gz"), "--task", "hbm", "--weights", str(hbm_weights),
                 "-o", str(out2), "--quiet"])
    assert code == 1
    row = _rows(out2 / "counts.csv")[0]
    assert row["status"] == "error" and "reads MRI" in row["message"] and "sub-01_ct.nii.gz" in row["message"]


def test_classify_hbm_on_an_mri_subject_with_missing_sequences(hbm_weights, tmp_path):
    folder = tmp_path / "sub-07"
    folder.mkdir()
    swi = np.array([[3.5, 0, 0, -84], [0, 3.5, 0, -98], [0, 0, 5.0, -60], [0, 0, 0, 1]])
    flair = np.array([[-4.0, 0, 0, 96], [0, -4.0, 0, 110], [0, 0, 4.0, -60], [0, 0, 0, 1]])
    dark = ((10, 5, 2), (-12, -8, 6), (20, 20, 10))
    nib.save(nib.Nifti1Image(ellipsoid_head(swi, dark_spots_mm=dark), swi), str(folder / "sub-07_swi.nii.gz"))
    nib.save(nib.Nifti1Image(ellipsoid_head(flair, shape=(48, 56, 30)), flair), str(folder / "sub-07_FLAIR.nii.gz"))
    lesions_out = tmp_path / "lesions"
    assert main(["lesions", str(folder), "-o", str(lesions_out), "--classical", "--modality", "mri", "--quiet",
                 "--no-pictures"]) == 0
    out = tmp_path / "cls"
    assert main(["classify", str(folder), "--task", "hbm", "--modality", "mri", "--weights", str(hbm_weights),
                 "--lesions", str(lesions_out), "-o", str(out), "--quiet", "--cam"]) == 0
    counts = _rows(out / "counts.csv")[0]
    rows = _rows(out / "classification.csv")
    per_lesion = [r for r in rows if r["lesion_id"]]
    assert counts["status"] == "ok" and int(counts["n_lesions"]) == len(per_lesion)
    subject_row = next(r for r in rows if not r["lesion_id"])
    if per_lesion:  # the subject row is the most suspicious lesion
        assert float(subject_row["probability"]) == max(float(r["probability"]) for r in per_lesion)
        assert all(r["label"] in ("hbm", "ich") for r in rows)
    else:
        assert subject_row["label"] == "no_lesion"
    assert "without T2w or FLAIR" not in counts["message"]  # FLAIR is there
    # SWI alone: the call comes with the caution the held-out-site measurement asks for (model card)
    (folder / "sub-07_FLAIR.nii.gz").unlink()
    lesions_swi = tmp_path / "lesions_swi"
    assert main(["lesions", str(folder), "-o", str(lesions_swi), "--classical", "--modality", "mri", "--quiet",
                 "--no-pictures"]) == 0
    assert main(["classify", str(folder), "--task", "hbm", "--modality", "mri", "--weights", str(hbm_weights),
                 "--lesions", str(lesions_swi), "-o", str(tmp_path / "cls_swi"), "--quiet"]) == 0
    message = _rows(tmp_path / "cls_swi" / "counts.csv")[0]["message"]
    assert "hbm without T2w or FLAIR: measured less accurate" in message


def test_classify_refuses_a_label_map_of_another_scan(ct_folder, expansion_weights, tmp_path):
    lesions_out = tmp_path / "lesions"
    assert main(["lesions", str(ct_folder / "sub-01_ct.nii.gz"), "-o", str(lesions_out), "--classical", "--quiet",
                 "--no-pictures"]) == 0
    other = tmp_path / "other"
    other.mkdir()
    (other / "sub-01_ct.nii.gz").write_bytes((ct_folder / "sub-02_ct.nii.gz").read_bytes())
    out = tmp_path / "cls"
    assert main(["classify", str(other), "--task", "expansion", "--weights", str(expansion_weights), "--lesions",
                 str(lesions_out), "-o", str(out), "--quiet"]) == 1
    message = _rows(out / "counts.csv")[0]["message"]
    assert "other input files" in message and "desc-hemorrhage_dseg" in message  # the record's SHA-256
    record = lesions_out / "sub-01" / "sub-01_lesions-record.json"
    kept = record.read_text()
    record.unlink()  # without the record (copied label maps): the grid check
    assert main(["classify", str(other), "--task", "expansion", "--weights", str(expansion_weights), "--lesions",
                 str(lesions_out), "-o", str(tmp_path / "cls1"), "--quiet"]) == 1
    assert "not on the grid" in _rows(tmp_path / "cls1" / "counts.csv")[0]["message"]
    record.write_text(kept)

    # same name, same grid, other content: refused by the SHA-256 in the lesions record
    source = nib.load(ct_folder / "sub-01_ct.nii.gz")
    changed = np.asarray(source.dataobj).copy()
    changed[changed > 40] -= 5
    nib.save(nib.Nifti1Image(changed, source.affine, source.header), other / "sub-01_ct.nii.gz")
    assert main(["classify", str(other), "--task", "expansion", "--weights", str(expansion_weights), "--lesions",
                 str(lesions_out), "-o", str(tmp_path / "cls2"), "--quiet"]) == 1
    assert "other input files" in _rows(tmp_path / "cls2" / "counts.csv")[0]["message"]

    # a rerun notices that the reused label map changed: the subject is redone, not skipped
    same = [str(ct_folder / "sub-01_ct.nii.gz"), "--task", "expansion", "--weights", str(expansion_weights),
            "--lesions", str(lesions_out), "-o", str(tmp_path / "cls3"), "--quiet"]
    assert main(["classify", *same]) == 0
    record = tmp_path / "cls3" / "sub-01" / "sub-01_classify-record.json"
    first = record.read_text()
    labels = lesions_out / "sub-01" / "sub-01_desc-hemorrhage_dseg.nii.gz"
    image = nib.load(labels)
    nib.save(nib.Nifti1Image(np.zeros(image.shape, np.int16), image.affine, image.header), labels)
    assert main(["classify", *same]) == 0
    assert record.read_text() != first
    assert _rows(tmp_path / "cls3" / "counts.csv")[0]["n_lesions"] == "0"

    # a corrupt (cut) label map: that subject's one-line reason naming the label map, not a generic error
    labels.write_bytes(labels.read_bytes()[:200])
    assert main(["classify", *same]) == 1
    message = _rows(tmp_path / "cls3" / "counts.csv")[0]["message"]
    assert "desc-hemorrhage_dseg" in message and "corrupt" in message and "unexpected" not in message


def test_expansion_samples_from_a_phantom_pair_set(tmp_path):
    """The training data path: CT phantom pairs -> shipped localizer -> lesions labelled from truth.csv."""
    from cmbdet.lesions.infer import load_lesion_model
    from cmbdet.phantom.ct import write_ct_set

    write_ct_set(tmp_path / "pairs", 2, 77, family="ct-a", fast=True, pairs=True, p_free=0.0)
    samples = build_sample_set("expansion", [tmp_path / "pairs"], ct_model=load_lesion_model(),
                               cache_dir=tmp_path / "cache")
    truth = {r["subject"]: r for r in _rows(tmp_path / "pairs" / "truth.csv") if r["lesion_id"] == "1"}
    assert set(samples.subject_labels) == set(truth)
    for subject, label in samples.subject_labels.items():
        assert label == int(truth[subject]["expands"])
    assert (samples.labels >= 0).sum() >= 1 and samples.crops.shape[1:] == (6, CROP_PIXELS, CROP_PIXELS)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2
    again = build_sample_set("expansion", [tmp_path / "pairs"], ct_model=load_lesion_model(),
                             cache_dir=tmp_path / "cache")
    assert np.array_equal(again.labels, samples.labels) and np.allclose(again.radiomics, samples.radiomics)
    assert samples.perturbed_radiomics is None and any(n.startswith("signs.") for n in samples.names)
    # training's view: the re-measured subject (x0000 of seed 77) also carries a perturbed re-acquisition
    training = build_sample_set("expansion", [tmp_path / "pairs"], ct_model=load_lesion_model(),
                                cache_dir=tmp_path / "cache", perturbed=True)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 4  # its own cache entries
    # mirp estimates Moran's I and Geary's C of large lesions by Monte Carlo: not the same run to run
    exact = np.array([n not in ("ct.morph_moran_i", "ct.morph_geary_c") for n in training.names])
    assert np.allclose(training.radiomics[:, exact], samples.radiomics[:, exact])
    first = training.subjects == "sub-cta77x0000"
    assert remeasured("sub-cta77x0000") and not remeasured("sub-cta77x0001")
    assert np.isfinite(training.perturbed_radiomics[first]).all()
    assert np.isnan(training.perturbed_radiomics[~first]).all()
    volume = training.names.index("ct.morph_volume")
    assert training.perturbed_radiomics[first, volume] == pytest.approx(training.radiomics[first, volume], rel=0.5)
    assert not np.allclose(training.perturbed_radiomics[first], training.radiomics[first])


def test_shipped_hbm_classifier_tells_a_metastasis_from_a_hematoma(tmp_path):
    """The shipped localizer + classifier (default weights), end to end on two phantom subjects of a
    training site (one hematoma, one with metastases): the subject labels come out right."""
    from cmbdet.phantom.hemorrhage_mri import write_mri_set
    from cmbdet.weights import read_metadata, shipped_weights

    for task in ("hbm", "expansion"):
        meta = read_metadata(shipped_weights(f"classifier_{task}.safetensors"))
        assert meta["kind"] == "classifier" and 0.0 < meta["threshold"] < 1.0
        assert all("/" not in name for name in meta["training_data"]["sources"])  # names, never paths
    write_mri_set(tmp_path / "mri", 2, 5, site="mri-s1", fast=True, balanced=True)  # subject 0 ich, 1 hbm
    files = sorted(p for p in (tmp_path / "mri").glob("*.nii.gz") if "desc-truth" not in p.name)
    out = tmp_path / "cls"
    assert main(["classify", *map(str, files), "--task", "hbm", "-o", str(out), "--quiet", "--no-pictures"]) == 0
    subject_rows = {r["subject"]: r["label"] for r in _rows(out / "classification.csv") if not r["lesion_id"]}
    assert subject_rows == {"sub-mris15x0000_ses-1": "ich", "sub-mris15x0001_ses-1": "hbm"}


def test_train_classifier_command_on_a_phantom_pair_set(tmp_path):
    """`cmbdet train classifier --task expansion` as a user runs it: phantom pairs in, loadable weights
    out, with what they were trained on, and the re-measured subjects' lesions in the cache."""
    from cmbdet.phantom.ct import write_ct_set
    from cmbdet.weights import read_metadata

    write_ct_set(tmp_path / "pairs", 10, 21, family="ct-a", fast=True, pairs=True, p_free=0.0)  # 5 expand, 5 not
    weights = tmp_path / "w.safetensors"
    assert main(["train", "classifier", "--task", "expansion", "--data", str(tmp_path / "pairs"), "-o", str(weights),
                 "--cache", str(tmp_path / "cache"), "--epochs", "1", "--ssl-epochs", "1", "--quiet"]) == 0
    meta = read_metadata(weights)
    assert meta["training_data"]["sources"] == ["pairs"] and meta["training_data"]["n_subjects"] == 10
    assert 0.0 < load_classifier("expansion", weights).threshold < 1.0
    remeasured_subjects = [f"sub-cta21x{i:04d}" for i in range(10) if remeasured(f"sub-cta21x{i:04d}")]
    assert remeasured_subjects  # 3 of these 10
    for cached in (tmp_path / "cache").glob("*.npz"):
        with np.load(cached) as data:
            rows = data["perturbed_radiomics"]
            subject = cached.name.rsplit("_", 1)[0]
            assert np.isfinite(rows).all() if subject in remeasured_subjects else np.isnan(rows).all()


def test_grad_cam_shows_the_evidence_for_the_label_given(expansion_weights):
    from cmbdet.classify.cam import grad_cam
    from cmbdet.classify.features import LesionFeatures
    from cmbdet.classify.model import load_classifier

    model = load_classifier("expansion", expansion_weights)
    rng = np.random.default_rng(1)
    crop = np.zeros((6, 64, 64), np.float32)
    crop[:5, 20:44, 24:40] = 0.7 + 0.1 * rng.random((5, 24, 16))
    crop[5, 20:44, 24:40] = 1.0
    feature = LesionFeatures(1, crop, np.zeros(len(model.names)), tuple(model.names), np.ones(5), 5.0, 1)
    toward, against = grad_cam(model, feature), grad_cam(model, feature, positive=False)
    assert toward.shape == against.shape == (64, 64)
    assert max(toward.max(), against.max()) == 1.0  # one of the two labels has evidence somewhere
    assert not np.allclose(toward, against)


def test_the_model_column_names_the_weights_file(expansion_weights, tmp_path):
    import shutil

    from cmbdet.classify.model import load_classifier

    assert load_classifier("expansion").name == "classifier_expansion"  # the shipped weights
    mine = tmp_path / "my_model.safetensors"
    shutil.copy(expansion_weights, mine)
    assert load_classifier("expansion", mine).name == "my_model"
