"""One deployable file: save and load (package.py), the host program stored as data and read
back through a closed vocabulary of ops (host_program.py). A frontend leaves no trace here."""
from .package import load, read_manifest, save

__all__ = ["load", "read_manifest", "save"]
