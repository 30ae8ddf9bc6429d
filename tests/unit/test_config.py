from pathlib import Path

import pytest

from lfsserve.config import ConfigError, load_config


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_defaults():
    c = load_config(env={})
    assert (c.server.host, c.server.port, c.auth.anonymous) == ("127.0.0.1", 8080, "read")
    assert c.root == Path("./data").resolve()
    assert c.repos_dir == c.root / "repos"


def test_precedence_file_flags_env(tmp_path):
    p = write(tmp_path, '[server]\nport = 1111\nhost = "0.0.0.0"\n[auth]\nanonymous = "none"\n')
    c = load_config(p, env={})
    assert (c.server.port, c.server.host, c.auth.anonymous) == (1111, "0.0.0.0", "none")
    c = load_config(p, overrides={"server": {"port": 2222, "host": None}}, env={})
    assert (c.server.port, c.server.host) == (2222, "0.0.0.0")  # None flag = not given
    c = load_config(p, overrides={"server": {"port": 2222}},
                    env={"LFSSERVE_PORT": "3333", "LFSSERVE_AUTH_ANONYMOUS": "write",
                         "LFSSERVE_HG_COMPRESSION": "zlib, none", "LFSSERVE_LFS_LOCKING": "false"})
    assert (c.server.port, c.auth.anonymous) == (3333, "write")
    assert c.hg.compression == ["zlib", "none"] and c.lfs.locking is False


def test_rules(tmp_path):
    p = write(tmp_path, '[[auth.rules]]\nrepos = "team/*"\nread = ["*"]\nwrite = ["alice"]\n')
    (rule,) = load_config(p, env={}).auth.rules
    assert (rule.repos, rule.read, rule.write) == ("team/*", ["*"], ["alice"])


@pytest.mark.parametrize("text, env, key", [
    ("[server]\nport = 'x'\n", {}, "server.port"),
    ("[server]\nprot = 1\n", {}, "server.prot"),
    ("[nope]\n", {}, "nope"),
    ("[server]\nport = 70000\n", {}, "server.port"),
    ("[auth]\nanonymous = 'all'\n", {}, "auth.anonymous"),
    ("[server]\ntrusted_proxies = ['not-an-ip']\n", {}, "server.trusted_proxies[0]"),
    ("[hg]\ncompression = ['brotli']\n", {}, "hg.compression[0]"),
    ("[storage]\nbackend = 'gcs'\n", {}, "storage.backend"),
    ("[storage]\nbackend = 's3'\n", {}, "storage.bucket"),
    ("[storage]\nbackend = 's3'\nbucket = 'b'\ntransfer = 'sideways'\n", {}, "storage.transfer"),
    ("[storage]\naddressing_style = 'dns'\n", {}, "storage.addressing_style"),
    ("[storage]\nprefix = 'no-slash'\n", {}, "storage.prefix"),
    ("[storage]\naccess_key_id = 'AKIA'\n", {}, "storage.access_key_id"),
    ("[[auth.rules]]\nrepos = 'x'\nread = 'alice'\n", {}, "auth.rules[0].read"),
    ("", {"LFSSERVE_SERVER_PROT": "1"}, "LFSSERVE_SERVER_PROT"),
    ("", {"LFSSERVE_PORT": "eighty"}, "server.port"),
    ("[auth]\nhtpasswd = '/nonexistent/file'\n", {}, "auth.htpasswd"),
])
def test_errors_name_the_key(tmp_path, text, env, key):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env=env)
    assert str(info.value).startswith(key), str(info.value)


def test_bad_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(write(tmp_path, "[server\n"), env={})
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml", env={})


def test_example_config_is_valid_and_complete():
    """config.example.toml parses, and mentions every option (commented or not)."""
    import dataclasses
    import typing

    from lfsserve.config import Config

    root = Path(__file__).resolve().parents[2]
    example = (root / "config.example.toml").read_text()
    load_config(root / "config.example.toml", env={})
    for section in dataclasses.fields(Config):
        assert f"[{section.name}]" in example, section.name
        for opt in dataclasses.fields(typing.get_type_hints(Config)[section.name]):
            assert f"{opt.name} =" in example, f"{section.name}.{opt.name} missing from config.example.toml"


def test_idle_timeout_bounds_headers_too(tmp_path):
    from lfsserve.app import create_app
    from lfsserve.server import runner_options

    config = load_config(None, overrides={"server": {"root": str(tmp_path)}}, env={})
    assert config.limits.idle_timeout == 60.0
    assert runner_options(create_app(config), config)["keepalive_timeout"] == 60.0
    config = load_config(None, overrides={"server": {"root": str(tmp_path)}},
                         env={"LFSSERVE_LIMITS_IDLE_TIMEOUT": "0"})
    assert "keepalive_timeout" not in runner_options(create_app(config), config)  # 0: aiohttp's default
    with pytest.raises(ConfigError, match=r"limits.idle_timeout"):
        load_config(None, env={"LFSSERVE_LIMITS_IDLE_TIMEOUT": "-1"})
