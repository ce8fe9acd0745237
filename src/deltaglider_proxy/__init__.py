"""DeltaGlider Proxy: an S3-compatible proxy that stores similar binaries as xdelta3 deltas."""

__version__ = "0.1.0"
