"""The ``tagtwin`` command line, the one entry point that ties the rooms together."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tagtwin")
except PackageNotFoundError:  # a source tree used without installing it
    __version__ = "0+unknown"
