"""The FUSE adapter (pyfuse3 + trio): a thin layer over the service. It decodes names, keeps inode
and handle tables, runs every blocking call in a worker thread, and maps exceptions to errno in
one place (errno_map.py)."""
