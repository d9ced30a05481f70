"""The Python API (LaminDB-compatible surface) over the service layer."""
