"""Checks on names that users choose (datasets, adapters, models) and on store paths.

A name is one path component: letters, digits, `.`, `_`, `+`, `-`, not starting with `.` or `-`.
That rules out `..`, absolute paths, NUL and separators, so no name can escape the artifact store.
"""

from __future__ import annotations

import re

from catalog.errors import InvalidInput

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]{0,127}")  # whole string: fullmatch, not `$`


def check_name(name: str, what: str = "name") -> str:
    """Return `name` if it is a safe single component, else raise InvalidInput naming `what`."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in (".", "..") or ".." in name:
        raise InvalidInput(
            f"invalid {what} {name!r}: use 1-128 letters, digits, '.', '_', '+' or '-' "
            "(no '/', '..', spaces or leading '.'/'-')"
        )
    return name


def split_ref(ref: str) -> tuple[str, int | None]:
    """`name` or `name:version` -> (name, version or None for the latest)."""
    name, sep, version = ref.partition(":")
    if not sep:
        return name, None
    if not version.isdigit():
        raise InvalidInput(f"invalid reference {ref!r}: expected NAME or NAME:VERSION (a number)")
    return name, int(version)
