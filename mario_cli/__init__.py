"""mario: train agents to play Super Mario Bros from pixels."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mario-rl")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+local"
