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
    """Open an Artifact, a key or a uid straight from storage (see api/open.py)."""
    if isinstance(target, Artifact):
        return target.open(**kwargs)
    return Artifact.get(str(target)).open(**kwargs)


__all__ = ["Artifact", "setup", "settings", "AUTO_KEY_PREFIX", "open", "__version__"]
