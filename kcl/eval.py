"""Deprecated: `kcl.eval` is now `kcl.evaluation` (the old name shadowed Python's `eval`).

Every public name of the old module is here, from `kcl.evaluation`, for one
release; importing it warns.
"""

import warnings

from kcl.evaluation import *  # noqa: F403
from kcl.evaluation import __all__  # noqa: F401

warnings.warn(
    "kcl.eval is renamed kcl.evaluation; kcl.eval will be removed in the next release. "
    "Use `from kcl import evaluation`.",
    DeprecationWarning,
    stacklevel=2,
)
