"""Old names kept working, with a :class:`DeprecationWarning` when they are used.

A module keeps its old names out of its namespace and out of ``__all__`` and answers them
from a module-level ``__getattr__`` (PEP 562)::

    if TYPE_CHECKING:  # mypy sees the alias; at run time the __getattr__ below answers it
        OldName = NewName
    else:
        __getattr__ = renamed(__name__, {"OldName": NewName})

so ``module.OldName`` and ``from module import OldName`` still give the same object, and warn
where they are used (``stacklevel=2``: the warning names the caller's module, which is how
the tests' ``error::DeprecationWarning:txapns.*`` filter catches txapns using an old name).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping

__all__ = ["renamed"]


def renamed(module: str, aliases: Mapping[str, object]) -> Callable[[str], object]:
    """A module ``__getattr__`` that answers each old name in ``aliases`` with its new object."""

    def __getattr__(name: str) -> object:
        try:
            new = aliases[name]
        except KeyError:
            raise AttributeError(f"module {module!r} has no attribute {name!r}") from None
        warnings.warn(
            f"{module}.{name} is deprecated: use {module}.{getattr(new, '__name__', new)}",
            DeprecationWarning,
            stacklevel=2,
        )
        return new

    return __getattr__
