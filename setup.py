"""Package metadata lives in pyproject.toml; this file is the hook for the optional CUDA
extension in csrc/, which lands with its own change."""

from setuptools import setup

setup()
