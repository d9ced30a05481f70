"""Local copies of artifacts. `copies.CopyCache` keeps user-visible copies (artifact.cache());
it never imports storage: it is handed a fetch callable."""
from .copies import CopyCache, Identity

__all__ = ["CopyCache", "Identity"]
