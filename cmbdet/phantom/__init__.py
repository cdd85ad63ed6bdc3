"""Realistic SWI / T2*-GRE phantoms with cerebral microbleeds and mimics.

See :mod:`cmbdet.phantom.generate` for what is (and is not) modelled.
"""

from .generate import PhantomSubject, make_subject, truth_rows, write_phantom_set
from .montage import render_montage
from .protocol import Protocol, sample_protocol

__all__ = [
    "PhantomSubject",
    "Protocol",
    "make_subject",
    "render_montage",
    "sample_protocol",
    "truth_rows",
    "write_phantom_set",
]
