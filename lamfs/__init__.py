"""lamfs: versioned data artifacts as ordinary files.

`import lamfs as lf` gives LaminDB's artifact API: `lf.setup`, `lf.settings`, `lf.Artifact`,
`lf.AUTO_KEY_PREFIX`, `lf.open()`.
"""
__version__ = "0.1.0"

from .api import setup  # noqa: E402
from .api.artifact import Artifact  # noqa: E402
from .api.settings import settings  # noqa: E402
from .keys import AUTO_KEY_PREFIX  # noqa: E402
from .logs import configure_api_logging  # noqa: E402

configure_api_logging()


def open(target, **kwargs):  # noqa: A001 - mirrors artifact.open()
    """Open an Artifact, a key, a uid, or a path inside a running lamfs mount straight from storage
    (ranged reads for S3, in place for local roots; never through the cache). See api/open.py."""
    if isinstance(target, Artifact):
        return target.open(**kwargs)
    text = str(target)
    if text.startswith("/"):
        from .api.open import open_mount_path

        opened = open_mount_path(text, **kwargs)
        if opened is not None:
            return opened
    return Artifact.get(text).open(**kwargs)


__all__ = ["Artifact", "setup", "settings", "AUTO_KEY_PREFIX", "open", "__version__"]
