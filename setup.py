# The package is described in setup.cfg.  This adds the Twisted plugin:
# twisted/plugins/ has no __init__.py (by design), so it is named here.
from setuptools import find_packages, setup

setup(packages=find_packages(include=["aitnode", "aitnode.*"]) + ["twisted.plugins"])
