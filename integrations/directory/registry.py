"""Directories by kind: `directory_for(tenant)` builds the tenant's `Directory`.

Each kind registers a factory (`register("privacyidea", factory)`); the built-in one registers
itself when the app is built (app/accounts/directory.py). The tenant tells its kind and settings
through `directory_config()` (app/tenants/models.py), which opens the encrypted service token:
this module has no database access and no keys, it only maps a kind to its implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from integrations.directory import Directory

BUILTIN = "builtin"


@dataclass(frozen=True)
class DirectoryConfig:
    """What a factory needs to reach a tenant's directory. `token` is the opened service token:
    hand it to the backend only, never to a log, an audit detail or a ticket (it is left out of
    the repr)."""

    tenant_id: str
    kind: str = BUILTIN
    url: str = ""
    realm: str = ""
    token: str = field(default="", repr=False)
    options: Mapping[str, Any] = field(default_factory=dict)


class HasDirectory(Protocol):
    def directory_config(self) -> DirectoryConfig: ...


DirectoryFactory = Callable[[DirectoryConfig], Directory]


class UnknownDirectoryKind(LookupError):
    """No factory is registered for the tenant's directory kind (a misconfiguration)."""

    def __init__(self, kind: str, known: tuple[str, ...]):
        super().__init__(kind)
        self.message = f"unknown directory kind {kind!r} (known: {', '.join(known) or 'none'})"

    def __str__(self) -> str:
        return self.message


_FACTORIES: dict[str, DirectoryFactory] = {}


def register(kind: str, factory: DirectoryFactory) -> None:
    """Make `kind` available to tenants; registering a kind again replaces its factory."""
    _FACTORIES[kind] = factory


def unregister(kind: str) -> None:
    """Forget a kind (tests that registered one of their own)."""
    _FACTORIES.pop(kind, None)


def kinds() -> tuple[str, ...]:
    """The kinds registered so far."""
    return tuple(sorted(_FACTORIES))


def is_registered(kind: str) -> bool:
    return kind in _FACTORIES


def build(config: DirectoryConfig) -> Directory:
    """The directory for a configuration; UnknownDirectoryKind when its kind has no factory."""
    try:
        factory = _FACTORIES[config.kind]
    except KeyError:
        raise UnknownDirectoryKind(config.kind, kinds()) from None
    return factory(config)


def directory_for(tenant: HasDirectory) -> Directory:
    """The tenant's directory (the built-in one unless the tenant configured another)."""
    return build(tenant.directory_config())
