"""Service settings: defaults that need nothing, ALTCAP_* parsing, clear start-up errors."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from captioner.serve.settings import (
    ENV_PREFIX,
    ConfigError,
    Settings,
    markdown_table,
)

CONFIGURATION_PAGE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_defaults_need_no_environment() -> None:
    s = Settings.load({})
    assert s == Settings()
    assert s.model == "clipcap-coco"
    assert s.data_dir == Path("data")
    assert (s.max_batch_size, s.max_wait_ms, s.max_queue) == (32, 5.0, 256)
    assert s.max_images_per_request == 32
    assert s.max_content_length == 20 * 1024 * 1024
    assert s.cache_url == "" and s.api_keys == () and s.rate_limit == ""
    assert s.allow_private_networks is False
    assert s.cors_origins == ("chrome-extension://*", "moz-extension://*")
    assert s.ratelimit_storage == "memory://"


def test_environment_values_are_parsed() -> None:
    env = {
        "ALTCAP_MODEL": "/models/mine",
        "ALTCAP_DEVICE": "cuda:1",
        "ALTCAP_DTYPE": "bfloat16",
        "ALTCAP_DATA_DIR": "/var/lib/altcap",
        "ALTCAP_MAX_BATCH_SIZE": "16",
        "ALTCAP_MAX_WAIT_MS": "2.5",
        "ALTCAP_MAX_CONTENT_LENGTH": "5MiB",
        "ALTCAP_FETCH_MAX_BYTES": "500KB",
        "ALTCAP_API_KEYS": " one, two ,,",
        "ALTCAP_RATE_LIMIT": "10/second;500/hour",
        "ALTCAP_ALLOW_PRIVATE_NETWORKS": "yes",
        "ALTCAP_CORS_ORIGINS": "https://a.example, chrome-extension://*",
        "ALTCAP_URL_TTL_S": "0",
        "ALTCAP_MAX_QUEUE": "",  # empty means unset, as compose files often write it
        "OTHER_VARIABLE": "ignored",
    }
    s = Settings.load(env)
    assert s.model == "/models/mine" and s.device == "cuda:1" and s.dtype == "bfloat16"
    assert s.data_dir == Path("/var/lib/altcap")
    assert (s.max_batch_size, s.max_wait_ms, s.max_queue) == (16, 2.5, 256)
    assert s.max_content_length == 5 * 1024 * 1024
    assert s.fetch_max_bytes == 500_000
    assert s.api_keys == ("one", "two")
    assert s.rate_limit == "10/second;500/hour"
    assert s.allow_private_networks is True
    assert s.cors_origins == ("https://a.example", "chrome-extension://*")
    assert s.url_ttl_s == 0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MAX_BATCH_SIZE", "many"),
        ("MAX_BATCH_SIZE", "0"),
        ("MAX_WAIT_MS", "-1"),
        ("MAX_WAIT_MS", "nan"),
        ("REQUEST_TIMEOUT_S", "0"),
        ("MAX_CONTENT_LENGTH", "20 parsecs"),
        ("ALLOW_PRIVATE_NETWORKS", "maybe"),
        ("DTYPE", "float8"),
        ("DEVICE", "gpu"),
        ("RATE_LIMIT", "lots"),
        ("CORS_ORIGINS", "example.com"),
        ("TRUSTED_PROXIES", "-1"),
        ("RATELIMIT_STORAGE_URL", "foo://x"),
        ("RATELIMIT_STORAGE_URL", "localhost:6379"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.load({ENV_PREFIX + name: value})
    assert info.value.code == "invalid_config"
    assert ENV_PREFIX + name in info.value.message
    assert repr(value) in info.value.message


def test_overrides_win_over_the_environment_and_may_be_typed(tmp_path: Path) -> None:
    env = {"ALTCAP_MAX_QUEUE": "7", "ALTCAP_API_KEYS": "from-env", "ALTCAP_MODEL": "env-model"}
    s = Settings.load(
        env,
        {
            "MAX_QUEUE": 3,
            "API_KEYS": ["a", "b"],
            "DATA_DIR": tmp_path,
            "ALLOW_PRIVATE_NETWORKS": True,
            "TESTING": True,  # not a setting: ignored here, left for Flask
        },
    )
    assert (s.max_queue, s.api_keys, s.data_dir) == (3, ("a", "b"), tmp_path)
    assert s.allow_private_networks is True
    assert s.model == "env-model"
    with pytest.raises(ConfigError, match=r"MAX_QUEUE \(test_config\)"):
        Settings.load({}, {"MAX_QUEUE": -3})


def test_off_turns_optional_features_off() -> None:
    s = Settings.load({"ALTCAP_RATE_LIMIT": "off", "ALTCAP_CORS_ORIGINS": "off"})
    assert s.rate_limit == "" and s.cors_origins == ()


def test_rate_limit_storage_follows_a_redis_cache() -> None:
    assert Settings(cache_url="redis://cache:6379/0").ratelimit_storage == "redis://cache:6379/0"
    assert Settings(cache_url="sqlite:///x.db").ratelimit_storage == "memory://"
    explicit = Settings(cache_url="redis://a", ratelimit_storage_url="redis://b")
    assert explicit.ratelimit_storage == "redis://b"


def test_fetch_limits_follow_the_settings() -> None:
    limits = Settings(fetch_max_bytes=1000, fetch_timeout_s=2, allow_private_networks=True)
    fetch = limits.fetch_limits()
    assert (fetch.max_bytes, fetch.total_timeout, fetch.allow_private) == (1000, 2, True)
    assert fetch.connect_timeout <= 2 and fetch.read_timeout <= 2


def test_secrets_stay_out_of_repr() -> None:
    s = Settings(api_keys=("hunter2",), cache_url="redis://:pw@host/0")
    assert "hunter2" not in repr(s) and ":pw@" not in repr(s)


def test_create_app_refuses_a_bad_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from app import create_app

    monkeypatch.setenv("ALTCAP_MAX_QUEUE", "lots")
    with pytest.raises(ConfigError, match="ALTCAP_MAX_QUEUE"):
        create_app()


def test_create_app_refuses_a_storage_it_cannot_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A storage whose client library is missing (memcached:// without pymemcache)."""
    from limits.errors import ConfigurationError

    import captioner.web.hooks
    from app import create_app

    def missing_library(*args: object) -> None:
        raise ConfigurationError("memcached prerequisite not available")

    monkeypatch.setattr(captioner.web.hooks, "_new_limiter", missing_library)
    config = {"RATE_LIMIT": "1/second", "RATELIMIT_STORAGE_URL": "memcached://localhost"}
    with pytest.raises(ConfigError, match="ALTCAP_RATELIMIT_STORAGE_URL"):
        create_app({**config, "DATA_DIR": tmp_path, "MODEL": str(tmp_path / "none")})


def test_table_documents_every_setting() -> None:
    rows = Settings.table()
    assert [r.name for r in rows] == [
        ENV_PREFIX + f.name.upper() for f in dataclasses.fields(Settings)
    ]
    assert all(r.description for r in rows)
    # The shown defaults are what the environment would need to hold to get the defaults.
    for row in rows:
        if row.default:
            assert Settings.load({row.name: row.default}) == Settings(), row.name
    table = markdown_table()
    assert table.count("\n") == len(rows) + 1


def test_docs_document_every_variable() -> None:
    """The docs' configuration table must list every variable (``python docs/generate.py``
    writes it from ``markdown_table()``)."""
    assert CONFIGURATION_PAGE.exists(), "docs/configuration.md is missing"
    text = CONFIGURATION_PAGE.read_text(encoding="utf-8")
    missing = [r.name for r in Settings.table() if not re.search(rf"\b{r.name}\b", text)]
    assert not missing, f"docs/configuration.md does not document: {', '.join(missing)}"
    assert markdown_table() in text, "docs/configuration.md: run `python docs/generate.py`"
