"""The FUSE adapter, the only code that speaks pyfuse3 to the kernel (ops.py), and the
`user.*` extended attributes that carry settings and control commands (xattrs.py).
"""
