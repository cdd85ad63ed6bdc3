"""cmbdet: cerebral microbleed detection in SWI / T2*-GRE MRI."""

__version__ = "0.1.0"
