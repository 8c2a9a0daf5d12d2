"""The filesystem core: what open, read, write, create, rename... mean for cachefs, on top of
the namespace, blob tier, fetcher and write-back. Knows nothing of FUSE reply objects.
"""
