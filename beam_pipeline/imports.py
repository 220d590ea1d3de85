"""Imports packages without the optional modules their `__init__` imports whenever they happen to be installed.

Some packages import integrations eagerly inside `try: ... except ImportError`: Beam imports pandas (for its
DataFrame type hints) and its BigQuery and Pub/Sub connectors, OpenVINO its model converter. A finder placed first on
sys.meta_path for the duration of the import makes importing such a module raise ModuleNotFoundError, which the
package catches; once it is removed, a later import of the module works as usual. (A None entry in sys.modules would
do the same for Python code, but Cython-compiled modules such as pyarrow's read that None as the module.)
"""

from __future__ import annotations

import contextlib
import importlib.abc
import sys
from collections.abc import Iterable, Iterator


class _HidingFinder(importlib.abc.MetaPathFinder):
    """Refuses to find the modules it hides; leaves every other import to the finders after it."""

    def __init__(self, modules: Iterable[str]):
        self._modules = frozenset(modules)

    def find_spec(self, fullname, path=None, target=None):
        if fullname in self._modules:
            raise ModuleNotFoundError(f"{fullname} is not imported here (beam_pipeline.imports)", name=fullname)
        return None


@contextlib.contextmanager
def modules_hidden(modules: Iterable[str]) -> Iterator[None]:
    """Within the block, importing any of `modules` that is not imported yet raises ModuleNotFoundError."""
    finder = _HidingFinder(modules)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
