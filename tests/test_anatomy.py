"""MNI anatomy: templates load offline, MARS region map is sensible."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from cmbdet import anatomy


@pytest.fixture(scope="module")
def regions():
    return anatomy.mni_region_map()


def test_import_does_no_work():
    code = (
        "import cmbdet.anatomy as a, sys; "
        "assert a._template_1mm.cache_info().currsize == 0; "
        "assert a.mni_maps.cache_info().currsize == 0; "
        "assert 'nilearn.datasets' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_templates_load():
    for kind in ("t1", "gm", "wm", "csf", "brain"):
        data, aff = anatomy.mni_template(kind)
        assert data.shape == (197, 233, 189)
        assert data.dtype == np.float32
        assert 0.0 <= data.min() and data.max() <= 1.0
        np.testing.assert_allclose(aff[:3, 3], (-98, -134, -72))
    data2, aff2 = anatomy.mni_template("gm", resolution=2)
    assert data2.shape == (99, 117, 95)
    assert aff2[0, 0] == 2.0


def test_region_map_labels_and_points(regions):
    labels, aff = regions
    assert labels.dtype == np.int8
    assert labels.shape == (197, 233, 189)
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    counts = np.bincount(labels.ravel(), minlength=4)
    assert counts[1] > counts[2] > 0 and counts[1] > counts[3] > 0
    inv = np.linalg.inv(aff)

    def at(x, y, z):
        i, j, k = np.round(inv[:3, :3] @ (x, y, z) + inv[:3, 3]).astype(int)
        return int(labels[i, j, k])

    assert at(0, -30, -40) == anatomy.INFRATENTORIAL  # pons
    assert at(25, -70, -35) == anatomy.INFRATENTORIAL  # cerebellar hemisphere
    assert at(-25, -70, -35) == anatomy.INFRATENTORIAL
    assert at(22, 0, 0) == anatomy.DEEP  # putamen / pallidum
    assert at(-22, 0, 0) == anatomy.DEEP
    assert at(-12, -18, 8) == anatomy.DEEP  # thalamus
    assert at(0, 0, 22) in (anatomy.DEEP, 0)  # corpus callosum / ventricle
    assert at(40, -60, 40) == anatomy.LOBAR  # parietal
    assert at(-40, -60, 40) == anatomy.LOBAR
    assert at(-55, -20, -10) == anatomy.LOBAR  # temporal cortex
    assert at(0, 50, 30) == anatomy.LOBAR or at(5, 50, 30) == anatomy.LOBAR  # medial frontal
    assert at(95, 90, 110) == 0  # outside the brain
    # left/right symmetric to within a few percent
    lr = (labels == anatomy.DEEP)[:98].sum() / max((labels == anatomy.DEEP)[99:].sum(), 1)
    assert 0.85 < lr < 1.15


def test_named_centres_in_expected_regions():
    for name in ("globus_pallidus", "putamen"):
        for c, _ in anatomy.IRON_NUCLEI_MNI[name]:
            assert anatomy.region_at_mni(np.array(c))[0] == anatomy.DEEP, name
    for name in ("substantia_nigra", "red_nucleus", "dentate"):
        for c, _ in anatomy.IRON_NUCLEI_MNI[name]:
            assert anatomy.region_at_mni(np.array(c))[0] == anatomy.INFRATENTORIAL, name
    # air cavities lie outside the brain
    for items in anatomy.AIR_CAVITIES_MNI.values():
        for c, _ in items:
            assert anatomy.region_at_mni(np.array(c))[0] == 0
    # air-bone zones lie in the brain (they are where dropout is seen)
    for pts in anatomy.AIR_BONE_ZONES_MNI.values():
        for c in pts:
            assert anatomy.region_at_mni(np.array(c))[0] != 0


def test_maps_consistent_between_resolutions():
    m1 = anatomy.mni_maps(1)
    m2 = anatomy.mni_maps(2)
    assert m1.shape == (197, 233, 189 + 28)
    assert m1.regions[::2, ::2, ::2].shape == m2.regions.shape
    inside = m2.regions > 0
    agree = (m1.regions[::2, ::2, ::2][inside] == m2.regions[inside]).mean()
    assert agree > 0.95
    # head is larger than the brain: d_env negative inside
    assert m1.d_env[m1.brain].mean() < 0
