"""How store keys become paths, and paths become keys.

A key under the store prefix is split at '/'. Every component must be a usable file name: not
empty (``a//b``), not ``.`` or ``..``, at most 255 bytes, no NUL. Keys that break these rules are
left out of the mount (logged once by the caller) instead of being mangled, so no name can point
outside the mount or the cache dir.
"""

from __future__ import annotations

import os

from .errors import InvalidName, NameTooLong

MAX_NAME_BYTES = 255

#: Per-directory metadata object written by cachefs (modes, mtimes, symlinks, xattrs). Hidden.
MANIFEST_NAME = ".cachefs.dir"

#: ``KEY.cachefs-used``: an empty object whose last write is when KEY was last used (mounted or
#: read as a pack), written at most once a day per key by each runner (docs/BUCKET.md). Next to
#: its key, so a runner allowed to write KEY may write it, and one LIST shows both. Hidden.
USE_SUFFIX = ".cachefs-used"

#: Names the mount never shows and refuses to create.
RESERVED_NAMES = frozenset({MANIFEST_NAME})


def is_internal(name: str) -> bool:
    """A name (or key) cachefs keeps for itself: a manifest or a last-use marker."""
    base = name.rpartition("/")[2]
    return base == MANIFEST_NAME or (base.endswith(USE_SUFFIX) and base != USE_SUFFIX)


def component_problem(name: str) -> str | None:
    """Why ``name`` cannot be a path component, or None if it can."""
    if name == "":
        return "empty path component (a '//' in the key)"
    if name in (".", ".."):
        return f"'{name}' path component"
    if "\0" in name:
        return "NUL byte in the key"
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        return f"component longer than {MAX_NAME_BYTES} bytes"
    return None


def name_from_fuse(raw: bytes) -> str:
    """A FUSE name as a key component, or InvalidName / NameTooLong.

    Keys are UTF-8, so a name that is not valid UTF-8 cannot be stored.
    """
    if len(raw) > MAX_NAME_BYTES:
        raise NameTooLong(f"name longer than {MAX_NAME_BYTES} bytes")
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidName(f"name {raw!r} is not valid UTF-8") from None
    if name in RESERVED_NAMES or is_internal(name):
        raise InvalidName(f"'{name}' is reserved by cachefs")
    problem = component_problem(name)
    if problem:
        raise InvalidName(problem)
    return name


def name_to_fuse(name: str) -> bytes:
    return os.fsencode(name)
