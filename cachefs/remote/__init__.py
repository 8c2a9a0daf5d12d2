"""Everything that talks to the store or an origin on the core's behalf: the directory tree
as listed (namespace.py), manifests, fetching, write-back and its streaming uploads, origin
fallback and the HTTP client, prefetch, and --subtree resolution.
"""
