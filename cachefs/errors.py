"""The project's own exceptions.

Store, HTTP and disk failures are translated into these classes where they happen (store/s3.py,
remote/origin.py, tier/blobs.py); the FUSE adapter turns them into an errno with one table
(``errno_for``).
Nothing else needs to know about botocore or httpx exception types.
"""

from __future__ import annotations

import errno


class CacheFSError(Exception):
    """Base class. ``errno`` is what a FUSE caller sees when this reaches the adapter."""

    errno = errno.EIO


class NotFound(CacheFSError):
    errno = errno.ENOENT


class Detached(NotFound):
    """A node is no longer attached to the root (unlinked, or its directory went away), so it
    has no key: it must never be given one built from a partial path."""


class BucketNotFound(NotFound):
    """The bucket named by the store URL does not exist."""


class StoreUnavailable(CacheFSError):
    """The store could not be reached or kept failing (network, timeouts, 5xx) after retries."""

    errno = errno.EIO


class AccessDenied(CacheFSError):
    """The store refused our credentials or the request (403, bad signature, unknown key id)."""

    errno = errno.EACCES


class ObjectChanged(CacheFSError):
    """The object was replaced while we read it (ETag precondition failed)."""

    errno = errno.ESTALE


class ChecksumMismatch(CacheFSError):
    """Downloaded or cached bytes do not match their digest: never served."""

    errno = errno.EIO


class InvalidName(CacheFSError):
    """A name that cannot become a store key (not UTF-8, reserved, contains '/')."""

    errno = errno.EINVAL


class NameTooLong(CacheFSError):
    errno = errno.ENAMETOOLONG


class ReadOnly(CacheFSError):
    errno = errno.EROFS


class NotEmpty(CacheFSError):
    errno = errno.ENOTEMPTY


class Exists(CacheFSError):
    errno = errno.EEXIST


class IsADirectory(CacheFSError):
    errno = errno.EISDIR


class NotADirectory(CacheFSError):
    errno = errno.ENOTDIR


class NoSpace(CacheFSError):
    errno = errno.ENOSPC


class TooBig(CacheFSError):
    """A value larger than the limit for it (an extended attribute over 16 KiB)."""

    errno = errno.E2BIG


class NotPermitted(CacheFSError):
    errno = errno.EPERM


class Unsupported(CacheFSError):
    errno = errno.EOPNOTSUPP


class CrossDevice(CacheFSError):
    """A rename between layers that cannot hold the same file (EXDEV: mv copies instead)."""

    errno = errno.EXDEV


class InvalidArgument(CacheFSError):
    errno = errno.EINVAL


class TimedOut(CacheFSError):
    """An operation did not finish within the configured I/O timeout."""

    errno = errno.EIO


class ConfigError(CacheFSError):
    """A user mistake in flags, environment or config file: reported as one line, exit 2."""


def errno_for(exc: BaseException) -> int:
    """The errno a FUSE request should fail with for ``exc``.

    OSError keeps its own errno (a full disk stays ENOSPC); anything unexpected is EIO so that a
    bug never takes the mount down.
    """
    if isinstance(exc, CacheFSError):
        return exc.errno
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO


def unwrap_group(group: BaseExceptionGroup) -> BaseException:
    """The error to report from a nursery's exception group: its first real failure.

    Cancellation alone is passed through as the group itself, so trio can route it.
    """
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            inner = unwrap_group(exc)
            if inner is not exc:
                return inner
        elif not _is_cancelled(exc):
            return exc
    return group


def _is_cancelled(exc: BaseException) -> bool:
    return type(exc).__name__ == "Cancelled" and type(exc).__module__.startswith("trio")
