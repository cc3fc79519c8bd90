"""Exception types raised by fastgda.

Every error a user can cause derives from ``FastGDAError``; the CLI turns these into a one-line message and
exit code 2, and anything else into exit code 1::

    FastGDAError
    ├── ConfigError                  (also ValueError) a setting is out of its valid range
    ├── DatasetError                 bad images, captions or annotation files
    ├── IncompatibleArtifactError    (also ValueError) a manifest disagrees with what was expected
    ├── MissingDependencyError       (also ImportError) an optional extra is not installed
    └── NotFittedError               (also RuntimeError) a verb was called before its prerequisite
"""

from __future__ import annotations


class FastGDAError(Exception):
    """Base class for every error a user of fastgda can cause and fix."""


class ConfigError(FastGDAError, ValueError):
    """A setting is out of range or not one of its choices: the message names the setting and the valid values."""


class DatasetError(FastGDAError):
    """A dataset is malformed: a missing or corrupt image, an empty caption, a duplicate id."""


class IncompatibleArtifactError(FastGDAError, ValueError):
    """An artifact's manifest does not match what the caller expected (kind, version, shapes, digest)."""


class MissingDependencyError(FastGDAError, ImportError):
    """An optional dependency is missing; the message names the extra that provides it."""


class NotFittedError(FastGDAError, RuntimeError):
    """A method was called before the object was trained, built or loaded."""
