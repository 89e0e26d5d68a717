"""The ft catalog: settings, database models, sessions, repository functions and the artifact store."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ft")
except PackageNotFoundError:  # running from a checkout that was not installed
    __version__ = "0+unknown"
