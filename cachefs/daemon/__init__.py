"""The mount daemon: builds every part once and hands each its collaborators (run.py), the
cache-dir lock (lock.py, no pyfuse3), the mount records that outlive a crash (mountrec.py) and
the one reader of the mount's control attributes (control.py, no pyfuse3).
"""
