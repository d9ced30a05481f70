"""Service layer: the artifact lifecycle rules of SEMANTICS.md (save, replace, rename, delete,
commit ordering). No pyfuse3, no trio: the Python API, the CLI and the mount share it."""
from .artifacts import ArtifactService, Draft, ReplaceDraft

__all__ = ["ArtifactService", "Draft", "ReplaceDraft"]
