"""Multi-sequence MRI phantoms (SWI/T2*, T1, post-contrast T1, T2, FLAIR) with non-neoplastic
hematomas and hemorrhagic metastases, from several simulated sites."""

from .generate import SITES, MRIPhantom, make_mri_subject, write_mri_set

__all__ = ["SITES", "MRIPhantom", "make_mri_subject", "write_mri_set"]
