"""cachefs: a FUSE read-through cache filesystem over S3, for CI machines."""

__version__ = "0.1.0"

from .api import CacheMiss, Mount, MountError, SyncError, mount, mounted, stats, sync, unmount

__all__ = ["CacheMiss", "Mount", "MountError", "SyncError", "__version__", "mount", "mounted",
           "stats", "sync", "unmount"]
