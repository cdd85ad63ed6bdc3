"""Packages of cmbdet (everything else is in pyproject.toml).

The shipped weights live in the repository's top-level ``weights/`` folder; a build (wheel, sdist,
``pip install .``) maps that folder into the package as ``cmbdet/_weights/`` so that an installed
cmbdet carries its default weights. `cmbdet.weights` looks there first, then in ``weights/`` beside
the package (a clone or an editable install).
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["cmbdet", "cmbdet.*"]), "cmbdet._weights"],
    package_dir={"cmbdet._weights": "weights"},
)
