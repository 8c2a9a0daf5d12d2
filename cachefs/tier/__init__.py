"""The local blob tier: content-addressed, verified, size-capped blobs (blobs.py), their sqlite
index (db.py), listings kept across mounts (listings.py) and block checksums (integrity.py).
"""
