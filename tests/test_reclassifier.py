"""Stage 2: patch geometry, the ultralytics bridge, and no network ever."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np

from cmbdet.reclassifier.patches import extract_patches
from cmbdet.volume import volume_from_image

ROOT = Path(__file__).resolve().parents[1]

# Installed before anything else in a child process: any connect or name lookup fails the run.
SOCKET_GUARD = textwrap.dedent("""
    import socket, sys
    def _refuse(*args, **kwargs):
        sys.stderr.write(f"NETWORK ATTEMPT {args!r}\\n")
        raise SystemExit(97)
    socket.socket.connect = _refuse
    socket.socket.connect_ex = _refuse
    socket.create_connection = _refuse
    socket.getaddrinfo = _refuse
    socket.gethostbyname = _refuse
""")


def _blob_volume(axcodes_affine: np.ndarray) -> tuple:
    """A 1 mm volume with one dark sphere at world (10, -20, 5) and a dark tube along z at x=-15."""
    shape = (64, 64, 40)
    data = np.full(shape, 100.0, dtype=np.float32)
    ijk = np.indices(shape).reshape(3, -1).T
    world = nib.affines.apply_affine(axcodes_affine, ijk)
    sphere = np.linalg.norm(world - [10, -20, 5], axis=1) <= 2.5
    tube = np.linalg.norm(world[:, :2] - [-15, -20], axis=1) <= 1.2
    flat = data.reshape(-1)
    flat[sphere] = 10.0
    flat[tube] = 10.0
    return volume_from_image(nib.Nifti1Image(data, axcodes_affine)), world


def test_patch_planes_show_a_sphere_in_all_planes_and_a_vein_as_dot_and_line():
    affine = np.array([[-1.0, 0, 0, 30], [0, 1, 0, -50], [0, 0, 1, -15], [0, 0, 0, 1]])  # LAS
    volume, _ = _blob_volume(affine)
    patches = extract_patches(volume, [[10, -20, 5], [-15, -20, 5]], fov_mm=32, size=64)
    assert patches.shape == (2, 64, 64, 3) and patches.dtype == np.uint8
    centre = slice(30, 34)
    sphere, vein = patches[0], patches[1]
    assert np.all(sphere[centre, centre, :] < 30), "sphere dark at the centre of all three planes"
    assert np.all(sphere[:8, :8, :] > 80), "tissue around it near the tissue level"
    core = slice(31, 33)
    assert vein[core, core, 0].max() < 30, "the tube is a dot on the axial plane"
    assert vein[8:24, 8:24, 0].min() > 80, "with tissue around the dot"
    assert vein[2:62, core, 1].mean() < 30, "and a line through the coronal plane (rows = S->I)"
    assert sphere[2:14, core, 1].min() > 80, "while the sphere does not continue"
    # The sphere is in the same place whatever the file's axis order: LPS copy of the same world.
    lps = np.array([[-1.0, 0, 0, 30], [0, -1, 0, 13], [0, 0, 1, -15], [0, 0, 0, 1]])
    flipped = nib.Nifti1Image(np.flip(np.asarray(volume.to_source_array(volume.data)), 1).copy(), lps)
    again = extract_patches(volume_from_image(flipped), [[10, -20, 5]], fov_mm=32, size=64)
    assert np.abs(again[0].astype(int) - sphere.astype(int)).max() <= 1


def test_patch_tensor_matches_what_the_ultralytics_trainer_reads(tmp_path):
    from cmbdet.reclassifier.infer import patch_tensor
    from cmbdet.reclassifier.yolo import offline_ultralytics

    offline_ultralytics()
    from PIL import Image
    from ultralytics.data.augment import classify_transforms

    rng = np.random.default_rng(0)
    patch = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    path = tmp_path / "p.png"
    cv2.imwrite(str(path), patch)
    image = cv2.imread(str(path))  # as the trainer: BGR read, then RGB, then its eval transform
    expected = classify_transforms(size=64)(Image.fromarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB)))
    got = patch_tensor(patch[None])[0]
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-6)


def test_ultralytics_import_build_and_train_step_open_no_socket(tmp_path):
    """Build the stage-2 YOLO model and run a one-epoch ultralytics training on a tiny patch set,
    in a fresh process where any connect or DNS lookup aborts with exit code 97."""
    dataset = tmp_path / "patches"
    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        for name in ("cmb", "mimic"):
            folder = dataset / split / name
            folder.mkdir(parents=True)
            for n in range(6):
                cv2.imwrite(str(folder / f"{n}.png"), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    script = SOCKET_GUARD + textwrap.dedent(f"""
        from pathlib import Path
        import os
        import numpy as np
        from cmbdet.reclassifier.train import patch_augmenter
        from cmbdet.reclassifier.yolo import build_classifier, train_classifier
        # albumentations asks PyPI for updates at import unless told not to: this must stay quiet.
        patch_augmenter(0)(image=np.full((64, 64, 3), 100, np.uint8))
        net = build_classifier(2)
        net, yaml = train_classifier(Path({str(dataset)!r}), Path({str(tmp_path / 'runs')!r}), epochs=1,
                                     imgsz=64, batch=4, seed=0, workers=0)
        assert yaml["nc"] == 2, yaml
        home = Path.home()
        assert not (home / ".config" / "Ultralytics").exists() or os.environ["YOLO_CONFIG_DIR"] != str(home)
        print("OK", os.environ["YOLO_CONFIG_DIR"])
    """)
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "NETWORK ATTEMPT" not in run.stderr
    assert "OK" in run.stdout
    assert "cmbdet-ultralytics-" in run.stdout  # the private config dir, not the user's home
    leftovers = {p.name for p in tmp_path.iterdir()}
    assert leftovers <= {"patches", "runs"}, f"ultralytics wrote into the working directory: {leftovers}"


def test_final_score_weighs_the_two_stages():
    from cmbdet.reclassifier.infer import final_score

    stage1, stage2 = np.array([0.9, 0.2, 0.5]), np.array([0.1, 0.8, 0.5])
    np.testing.assert_allclose(final_score(stage1, stage2, 0.0), stage2)
    np.testing.assert_allclose(final_score(stage1, stage2, 0.5), np.sqrt(stage1 * stage2))
    np.testing.assert_allclose(final_score(stage1, stage2, 1.0), stage1)


def _mined(subject: str, n_cmb: int, n_mimic: int, rng: np.random.Generator):
    from cmbdet.reclassifier.train import MinedScan

    patches = rng.integers(0, 255, (n_cmb + n_mimic, 64, 64, 3), dtype=np.uint8)
    labels = np.array([True] * n_cmb + [False] * n_mimic)
    return MinedScan(subject, patches, labels, patches[:0], [], [])


def test_patch_dataset_balances_classes_and_is_seeded(tmp_path):
    from cmbdet.reclassifier.train import write_patch_dataset

    mined = [_mined("s1", 2, 5, np.random.default_rng(0)), _mined("s2", 1, 4, np.random.default_rng(1))]
    counts = write_patch_dataset(mined, tmp_path / "a", "train", np.random.default_rng(5), cmb_copies=4,
                                 mimic_copies=2)
    assert counts == {"cmb": 3 * 4, "mimic": 9 * 2}
    assert write_patch_dataset(mined, tmp_path / "v", "val", np.random.default_rng(5)) == {"cmb": 3, "mimic": 9}
    write_patch_dataset(mined, tmp_path / "b", "train", np.random.default_rng(5), cmb_copies=4, mimic_copies=2)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(files) == 30
    originals, augmented = 0, 0
    for f in files:
        a, b = cv2.imread(str(tmp_path / "a" / f)), cv2.imread(str(tmp_path / "b" / f))
        np.testing.assert_array_equal(a, b)  # same seed, same images
        if f.stem.endswith("_0"):
            originals += 1
        else:
            index = int(f.stem.split("_")[1])
            scan = mined[0] if f.stem.startswith("s1") else mined[1]
            augmented += int(not np.array_equal(a, scan.patches[index]))
    assert originals == 12 and augmented >= 15  # the copies beyond the first are varied


def test_operating_point_uses_stage1_when_it_helps(monkeypatch):
    """Stage 2 is unsure of a true CMB that stage 1 is sure of: a stage-1 weight > 0 must win."""
    from cmbdet.reclassifier import train as stage2_train

    truth = [{"subject": "s", "x_mm": 0.0, "y_mm": 0.0, "z_mm": 0.0, "diameter_mm": 4.0},
             {"subject": "s", "x_mm": 30.0, "y_mm": 0.0, "z_mm": 0.0, "diameter_mm": 4.0}]
    candidates = [{"subject": "s", "x_mm": x, "y_mm": 0.0, "z_mm": 0.0, "score": s1}
                  for x, s1 in ((0.0, 0.9), (30.0, 0.95), (-40.0, 0.3), (60.0, 0.2))]
    mined = [stage2_train.MinedScan("s", np.zeros((0, 64, 64, 3), np.uint8), np.zeros(0, bool),
                                    np.zeros((4, 64, 64, 3), np.uint8), candidates, truth)]
    monkeypatch.setattr(stage2_train, "cmb_probability", lambda _r, _p: np.array([0.9, 0.3, 0.4, 0.35]))
    weight, threshold, pooled = stage2_train.choose_operating_point(None, mined)
    assert weight > 0 and pooled["f1"] == 1.0
    monkeypatch.setattr(stage2_train, "cmb_probability", lambda _r, _p: np.array([0.9, 0.8, 0.1, 0.1]))
    weight, threshold, pooled = stage2_train.choose_operating_point(None, mined)
    assert weight == 0.0 and pooled["f1"] == 1.0


def test_operating_point_keeps_candidate_sensitivity(monkeypatch):
    """Best F1 alone would drop a faint true CMB to lose two mimics; when keeping it costs little F1
    (within the tolerance), the point that keeps every microbleed stage 1 found wins."""
    from cmbdet.reclassifier import train as stage2_train

    truth = [{"subject": "s", "x_mm": 30.0 * i, "y_mm": 0.0, "z_mm": 0.0, "diameter_mm": 4.0} for i in range(3)]
    candidates = [{"subject": "s", "x_mm": x, "y_mm": 0.0, "z_mm": 0.0, "score": 0.5}
                  for x in (0.0, 30.0, 60.0, -40.0, -80.0)]
    mined = [stage2_train.MinedScan("s", np.zeros((0, 64, 64, 3), np.uint8), np.zeros(0, bool),
                                    np.zeros((5, 64, 64, 3), np.uint8), candidates, truth)]
    # the third CMB scores below both mimics
    monkeypatch.setattr(stage2_train, "cmb_probability", lambda _r, _p: np.array([0.9, 0.9, 0.2, 0.3, 0.3]))
    for kwargs in ({"max_sensitivity_loss": None}, {}):  # F1 0.80 vs 0.75: beyond the default tolerance 0.02
        _, threshold, pooled = stage2_train.choose_operating_point(None, mined, **kwargs)
        assert pooled["sensitivity"] == 2 / 3 and pooled["fp"] == 0 and pooled["rule"] == "best F1"
    _, threshold, pooled = stage2_train.choose_operating_point(None, mined, f1_tolerance=0.1)
    assert pooled["sensitivity"] == 1.0 and pooled["fp"] == 2 and threshold <= 0.2
    assert pooled["rule"].startswith("best F1 losing")
