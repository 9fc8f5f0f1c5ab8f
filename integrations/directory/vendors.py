"""Registers the vendor directory kinds Rekey ships: `privacyidea` and `keycloak` (docs/PRIVACYIDEA.md).

Imported when the app is built (app/__init__.py), so the web process, the worker and the CLI all know them.
"""
from __future__ import annotations

from integrations.directory import keycloak, privacyidea
from integrations.directory.registry import DirectoryConfig, register


def _privacyidea(config: DirectoryConfig) -> privacyidea.PrivacyIDEADirectory:
    return privacyidea.from_config(config)


def _keycloak(config: DirectoryConfig) -> keycloak.KeycloakDirectory:
    return keycloak.from_config(config)


register("privacyidea", _privacyidea)
register("keycloak", _keycloak)
