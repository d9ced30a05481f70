"""Local caches; nothing here imports storage (callers hand in fetch callables).
- `copies.CopyCache`: user-visible copies for `artifact.cache()` (LaminDB's layout);
- `blocks.BlockCache`: the mount's bounded, persistent, range-based LRU block cache."""
from .blocks import BlockCache, ObjectId
from .copies import CopyCache, Identity

__all__ = ["BlockCache", "ObjectId", "CopyCache", "Identity"]
