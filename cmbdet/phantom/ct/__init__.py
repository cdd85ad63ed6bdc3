"""Non-contrast head CT phantoms (Hounsfield units) with hematomas, in families."""

from .generate import FAMILIES, CTPhantom, make_ct_subject, write_ct_set

__all__ = ["FAMILIES", "CTPhantom", "make_ct_subject", "write_ct_set"]
