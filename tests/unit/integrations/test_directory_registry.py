"""The directory registry: kinds register a factory; a tenant's configuration picks one."""

from __future__ import annotations

import pytest

from integrations.directory import Directory
from integrations.directory.registry import (
    DirectoryConfig,
    UnknownDirectoryKind,
    build,
    directory_for,
    is_registered,
    register,
    unregister,
)


class _Tenant:
    def __init__(self, config: DirectoryConfig):
        self.config = config

    def directory_config(self) -> DirectoryConfig:
        return self.config


def test_registered_kind_builds_from_the_tenants_config():
    seen: list[DirectoryConfig] = []

    def factory(config: DirectoryConfig) -> Directory:
        seen.append(config)
        return object()  # type: ignore[return-value]

    register("test-kind", factory)
    try:
        config = DirectoryConfig(tenant_id="t1", kind="test-kind", url="https://pi.test", realm="r", token="s3cret")
        directory_for(_Tenant(config))
        assert seen == [config] and is_registered("test-kind")
    finally:
        unregister("test-kind")
    assert not is_registered("test-kind")


def test_unknown_kind_names_the_known_ones():
    with pytest.raises(UnknownDirectoryKind) as info:
        build(DirectoryConfig(tenant_id="t1", kind="okta-nope"))
    assert "okta-nope" in str(info.value)


def test_token_stays_out_of_the_repr():
    assert "s3cret" not in repr(DirectoryConfig(tenant_id="t", kind="k", token="s3cret"))
