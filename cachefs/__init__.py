"""cachefs: a FUSE read-through cache filesystem over S3, for CI machines."""

__version__ = "0.1.0"
