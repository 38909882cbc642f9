"""Name -> object registries for models, losses, datasets and evaluators.

Each family file owns its registries (losses/vae.py has its LOSSES), so a name
like "hinge" means one thing per family. Unknown names raise ConfigError naming
the config field, which the scripts turn into a one-line message and exit 2.
"""

from collections.abc import Callable
from typing import Any

from jaxgen.config import ConfigError


class Registry:
    """A named collection of callables, filled with the `register` decorator."""

    def __init__(self, kind: str, field: str):
        self.kind = kind  # "loss", "model", ... used in error messages
        self.field = field  # the config field that selects an entry, e.g. "config.loss.name"
        self._entries: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        def add(obj):
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return add

    def get(self, name: str) -> Any:
        if name not in self._entries:
            raise ConfigError(
                f"{self.field}: unknown {self.kind} {name!r}; choose from {', '.join(sorted(self._entries))}"
            )
        return self._entries[name]

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return sorted(self._entries)
