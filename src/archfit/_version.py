"""The package version, apart from __init__ so that modules recording it import no stage."""
__version__ = "0.2.0"
