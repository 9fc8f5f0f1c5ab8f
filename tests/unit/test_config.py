"""Settings come from the environment, and production refuses the public development secrets."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from celery import _state

from app import InsecureConfiguration, create_app
from app.config import DEV_CODE_PEPPER, DEV_ENCRYPTION_KEY, DEV_SECRET_KEY, Settings

SECRETS = {
    "REKEY_SECRET_KEY": ("secret_key", DEV_SECRET_KEY),
    "REKEY_ENCRYPTION_KEYS": ("encryption_keys", DEV_ENCRYPTION_KEY),
    "REKEY_CODE_PEPPER": ("code_pepper", DEV_CODE_PEPPER),
}


@pytest.fixture
def production(settings: Any) -> Settings:
    """The suite's settings (real, non-development secrets) in production mode, with real
    message channels configured and an https public URL."""
    return replace(settings, env="production", phone_channel="twilio", email_channel="smtp",
                   public_url="https://rekey.example.com")


@pytest.fixture(autouse=True)
def keep_default_celery_app() -> Iterator[None]:
    # create_app makes its Celery app the process default; give the suite's back afterwards.
    previous = _state.default_app
    yield
    _state.set_default_app(previous)


class TestProductionSecrets:
    @pytest.mark.parametrize("variable", sorted(SECRETS))
    def test_production_refuses_each_development_secret(self, production, variable):
        name, dev_value = SECRETS[variable]

        with pytest.raises(InsecureConfiguration) as refused:
            create_app(replace(production, **{name: dev_value}))

        assert variable in str(refused.value)
        assert [v for v in SECRETS if v != variable and v in str(refused.value)] == []

    def test_production_names_every_development_secret_at_once(self, production):
        insecure = replace(production, secret_key=DEV_SECRET_KEY,
                           encryption_keys=DEV_ENCRYPTION_KEY, code_pepper=DEV_CODE_PEPPER)

        with pytest.raises(InsecureConfiguration) as refused:
            create_app(insecure)

        for variable in SECRETS:
            assert variable in str(refused.value)

    def test_production_refuses_the_development_key_among_rotated_keys(self, production):
        keys = f"{production.encryption_keys},{DEV_ENCRYPTION_KEY}"
        rotated = replace(production, encryption_keys=keys)

        with pytest.raises(InsecureConfiguration, match="REKEY_ENCRYPTION_KEYS"):
            create_app(rotated)

    def test_production_with_real_secrets_starts(self, production):
        application = create_app(production)

        assert application.test_client().get("/healthz").status_code == 200

    @pytest.mark.parametrize("variable, field", [("REKEY_PHONE_CHANNEL", "phone_channel"),
                                                 ("REKEY_EMAIL_CHANNEL", "email_channel")])
    def test_production_refuses_the_dev_channel_unless_accepted(self, production, variable, field):
        with pytest.raises(InsecureConfiguration, match=variable):
            create_app(replace(production, **{field: "dev"}))

        accepted = create_app(replace(production, allow_dev_channel=True, **{field: "dev"}))
        assert accepted.test_client().get("/healthz").status_code == 200

    def test_development_allows_the_development_secrets(self, production):
        development = replace(production, env="development", secret_key=DEV_SECRET_KEY,
                              encryption_keys=DEV_ENCRYPTION_KEY, code_pepper=DEV_CODE_PEPPER)

        assert create_app(development).test_client().get("/healthz").status_code == 200


class TestPublicUrl:
    @pytest.mark.parametrize("url", ["http://rekey.example.com", "https://192.0.2.10", "https://[2001:db8::1]",
                                     "https://203.0.113.5:8443/rekey", "rekey.example.com", "https://",
                                     "https://user:pw@rekey.example.com", "ftp://rekey.example.com",
                                     "https://rekey.example.com:port"])
    def test_production_refuses_a_public_url_that_is_not_https_with_a_host_name(self, production, url):
        with pytest.raises(InsecureConfiguration) as refused:
            create_app(replace(production, public_url=url))

        assert "REKEY_PUBLIC_URL" in str(refused.value)
        assert "pw" not in str(refused.value)  # the value itself (it may hold credentials) is not echoed

    @pytest.mark.parametrize("url", ["https://rekey.example.com", "https://id.example.com:8443/rekey/",
                                     "https://localhost"])
    def test_production_starts_with_an_https_host_name(self, production, url):
        assert create_app(replace(production, public_url=url)).test_client().get("/healthz").status_code == 200

    def test_development_on_an_ip_address_starts(self, production):
        development = replace(production, env="development", public_url="http://127.0.0.1:5000")

        assert create_app(development).test_client().get("/healthz").status_code == 200

    def test_the_development_default_is_localhost(self, monkeypatch):
        monkeypatch.delenv("REKEY_PUBLIC_URL", raising=False)

        settings = Settings()

        assert settings.public_url == "http://localhost:5000"
        assert settings.public_url_problem() == "is not https"  # fine in development only


class TestSettingsFromEnvironment:
    def test_defaults_are_the_development_ones(self, monkeypatch):
        for variable in ("REKEY_ENV", "REKEY_HOST", "REKEY_PORT", "REKEY_BROKER_URL", "REDIS_URL",
                         "REKEY_PHONE_CHANNEL", "REKEY_EMAIL_CHANNEL", "REKEY_ALLOW_DEV_CHANNEL", *SECRETS):
            monkeypatch.delenv(variable, raising=False)

        settings = Settings()

        assert (settings.env, settings.host, settings.port) == ("development", "127.0.0.1", 5000)
        assert (settings.broker_url, settings.redis_url) == ("", "redis://127.0.0.1:6379/0")
        assert sorted(settings.development_secrets_in_use()) == sorted(
            [*SECRETS, "REKEY_PHONE_CHANNEL", "REKEY_EMAIL_CHANNEL"])

    def test_variables_override_the_defaults(self, monkeypatch):
        monkeypatch.setenv("REKEY_HOST", "10.1.2.3")
        monkeypatch.setenv("REKEY_PORT", "8123")
        monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://rekey@db/rekey")
        monkeypatch.setenv("REKEY_SECRET_KEY", "a-real-secret")

        settings = Settings()

        assert (settings.host, settings.port) == ("10.1.2.3", 8123)
        assert settings.database_url == "postgresql+psycopg://rekey@db/rekey"
        assert "REKEY_SECRET_KEY" not in settings.development_secrets_in_use()

    def test_an_empty_number_means_the_default(self, monkeypatch):
        monkeypatch.setenv("REKEY_PORT", "")

        assert Settings().port == 5000
