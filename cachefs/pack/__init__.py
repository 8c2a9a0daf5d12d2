"""Packs: the format (format.py), packs mounted as directories (mounted.py), packs built
from a mount (build.py) or a local tree (save.py), .tar.zst archives (tarzst.py), compressed
objects (zobject.py) and the zstd codec (codec.py, the only zstandard user).
"""
