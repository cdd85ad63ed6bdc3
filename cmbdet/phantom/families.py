"""Phantom families: independent simulators, each standing for what one site or one simulator does.

Every model cmbdet ships is trained on the *training* families, chosen (ablations, variants,
thresholds) on the *validation* family, and judged once on the *test* family, which shares no
vessel, microbleed or noise code with the others (it was written separately and frozen before
training). The headline figures in the README and model cards are test-family figures.

| family | role | what it is |
|---|---|---|
| ``classic`` | training | the original generator (:mod:`.generate`) |
| ``randomized`` | training | the same anatomy with domain randomization (:mod:`.randomize`) |
| ``beta`` | training | an independent simulator (:mod:`.beta`); the validation family until session 16 |
| ``delta`` | validation | an independent simulator (:mod:`.delta`): spline veins, dipole foci |
| ``epsilon`` | validation | an independent simulator (:mod:`.epsilon`): dipole-field physics, small CMBs |
| ``gamma`` | test | an independent simulator (:mod:`.gamma`), frozen |

A set's ``dataset.json`` records the role its family had when the set was written; a model's metadata
records the role each set served for that model (`cmbdet.training_data.describe_sources`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .generate import PhantomSubject, make_subject
from .randomize import Randomization


@dataclass(frozen=True)
class Family:
    name: str
    role: str  # "training" | "validation" | "test"
    description: str
    #: Raised when a fix changes what the family's generator draws (recorded in dataset.json, so a
    #: model's metadata says which version of a family it was trained or chosen on).
    revision: int = 1


FAMILIES = {
    f.name: f for f in (
        Family("classic", "training", "the original cmbdet generator"),
        # revision 2: slices redrawn at 4-6 mm on 40 % of scans (ingredient `resolution`); `--without
        # resolution` draws revision 1 exactly (the detector weights up to session 15 were trained on revision 1,
        # session 16's on revision 2). revision 3: half the microbleeds sized over the whole 2-10 mm range
        # (ingredient `cmb_size`); `--without cmb_size` draws revision 2 exactly. revision 4 (session 19): half the
        # microbleeds and calcifications bloom by dipole dephasing (ingredient `dipole_bloom`); `--without
        # dipole_bloom` draws revision 3 exactly.
        Family("randomized", "training", "the original anatomy with domain randomization of tissue contrast, "
                                         "vessels, microbleed profile and size, noise, SWI processing and slice "
                                         "thickness", revision=4),
        # revision 2: medullary vein stubs (walkers stopped after 1-2 mm: microbleed-shaped blobs) dropped.
        # The validation family until session 16, when it joined the training families and delta took its role.
        Family("beta", "training", "an independent simulator (training; the validation family until session 16)",
               revision=2),
        Family("delta", "validation", "an independent simulator (validation: model and threshold choice)"),
        Family("epsilon", "validation", "an independent simulator, realistically hard (second validation family: "
                                        "model and threshold choice)"),
        Family("gamma", "test", "an independent simulator written separately, frozen (test: headline figures)"),
    )
}


def family_revision(family: str, without: tuple[str, ...] | list[str] = ()) -> int:
    """The revision a set of ``family`` drawn with ingredients ``without`` is: `randomized` without
    ``dipole_bloom`` (revision 4's ingredient) draws revision 3 exactly, without ``cmb_size`` too
    (revision 3's) revision 2, and without ``resolution`` too (revision 2's) revision 1."""
    if family == "randomized":
        revision = FAMILIES[family].revision
        for ingredient in ("dipole_bloom", "cmb_size", "resolution"):
            if ingredient not in without:
                break
            revision -= 1
        return revision
    return FAMILIES[family].revision


def subject_maker(family: str, *, without: tuple[str, ...] = ()) -> Callable[..., PhantomSubject]:
    """``make(rng, *, subject, tiny) -> PhantomSubject`` for a family. ``without``: randomization
    ingredients switched off (``randomized`` only; for ablations)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown phantom family {family!r}; known: {', '.join(FAMILIES)}")
    if without and family != "randomized":
        raise ValueError("--without applies to the 'randomized' family only")
    if family == "classic":
        return make_subject
    if family == "randomized":
        randomization = Randomization.without(list(without))

        def make(rng: np.random.Generator, *, subject: str, tiny: bool = False) -> PhantomSubject:
            return make_subject(rng, subject=subject, tiny=tiny, randomization=randomization)

        return make
    return importlib.import_module(f"{__package__}.{family}").make_subject
