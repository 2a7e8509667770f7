"""docker-compose.yml holds no secret of its own and publishes Redis only where the user asks.

Docker cannot run here, so the file is read as compose reads it: YAML, then compose's
variable interpolation (``${VAR}``, ``${VAR:-default}``, ``${VAR:?message}``, ``$$``),
written out below from the compose specification.  Without a password variable,
``docker compose up`` must stop with an error naming it; with them, every place that
holds a secret holds exactly the value given, never a literal of the file's own.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from deployment import ROOT, compose

#: The variables compose substitutes that are secrets (by name, as a reader would take them).
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|AUTH")
#: ``$$``, ``${NAME}`` or ``${NAME<op><word>}`` with op one of :- - :? ? :+ +, as in the spec.
_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")
LOOPBACK = {"127.0.0.1", "::1"}


class Missing(Exception):
    """``${NAME:?message}`` (or ``?``) with NAME unset: compose refuses to start."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"required variable {name} is missing a value: {message}")
        self.name, self.message = name, message


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """*text* as compose substitutes it from *env*."""

    def one(match: re.Match[str]) -> str:
        if match[0] == "$$":
            return "$"
        name = match[1] or match[4]
        op, word = match[2], match[3] or ""
        value = env.get(name)
        empty = value is None or (value == "" and op is not None and op.startswith(":"))
        if op in (":-", "-"):
            return word if empty else str(value)
        if op in (":?", "?"):
            if empty:
                raise Missing(name, word)
            return str(value)
        if op in (":+", "+"):
            return "" if empty else word
        return value or ""

    return _VARIABLE.sub(one, text)


def strings(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every string in the parsed file (keys too), with where it is."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield f"{path}/{key}", str(key)
            yield from strings(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from strings(value, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


def resolved(env: Mapping[str, str]) -> Any:
    """The parsed file with every string substituted, as ``docker compose config`` shows it."""

    def walk(node: Any) -> Any:
        if isinstance(node, Mapping):
            return {interpolate(str(k), env): walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return interpolate(node, env) if isinstance(node, str) else node

    return walk(compose())


def variables() -> set[str]:
    return {m[1] or m[4] for _, text in strings(compose()) for m in _VARIABLE.finditer(text) if m[0] != "$$"}


def secrets() -> set[str]:
    return {name for name in variables() if SECRET_NAME.search(name)}


GIVEN = {"REDIS_PASSWORD": "Rk8xq2redis", "FLOWER_PASSWORD": "Fl7zq9flower"}


def test_the_secrets_are_the_redis_and_flower_passwords() -> None:
    assert secrets() == set(GIVEN)


def test_every_use_of_a_secret_is_required_with_a_message_naming_it() -> None:
    uses = [
        (where, m)
        for where, text in strings(compose())
        for m in _VARIABLE.finditer(text)
        if m[0] != "$$" and SECRET_NAME.search(m[1] or m[4] or "")
    ]
    assert uses
    for where, m in uses:
        name = m[1] or m[4]
        assert m[2] == ":?", f"{where}: {m[0]} must be ${{{name}:?...}}: no default, no empty value"
        assert name in m[3], f"{where}: the message of {m[0]} should say to set {name}"


@pytest.mark.parametrize("name", sorted(GIVEN))
def test_compose_up_without_a_password_fails_naming_it(name: str) -> None:
    env = {k: v for k, v in GIVEN.items() if k != name}
    with pytest.raises(Missing) as info:
        resolved(env)
    assert info.value.name == name and name in str(info.value)
    with pytest.raises(Missing):
        resolved({**env, name: ""})  # an empty password is no password either
    resolved(GIVEN)  # and with both, nothing is missing


def _redis_urls(config: Any) -> Iterator[tuple[str, str]]:
    for service, body in config["services"].items():
        for key, value in (body.get("environment") or {}).items():
            if str(value).startswith(("redis://", "rediss://")):
                yield f"{service}/{key}", str(value)


def test_every_place_holding_a_secret_holds_exactly_the_value_given() -> None:
    """No literal password of the file's own: Redis's, the URLs', Flower's, the health check's."""
    config = resolved(GIVEN)
    redis = config["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--requirepass") + 1] == GIVEN["REDIS_PASSWORD"]
    health = [str(a) for a in redis["healthcheck"]["test"]]
    assert "-a" not in health, "redis-cli -a puts the password on a command line; use REDISCLI_AUTH"
    assert redis["environment"]["REDISCLI_AUTH"] == GIVEN["REDIS_PASSWORD"]
    urls = dict(_redis_urls(config))
    assert {"worker/TILECHORD_REDIS_URL", "flower/TILECHORD_REDIS_URL"} <= set(urls)
    for where, url in urls.items():
        userinfo = re.match(r"rediss?://([^@/]*)@", url)
        assert userinfo, f"{where}: {url} has no password"
        assert userinfo[1].rpartition(":")[2] == GIVEN["REDIS_PASSWORD"], where
    user, _, password = config["services"]["flower"]["environment"]["FLOWER_BASIC_AUTH"].partition(":")
    assert user and password == GIVEN["FLOWER_PASSWORD"]


def _published(entry: Any) -> tuple[str, str]:
    """(host address, host port) of one ``ports:`` entry; an empty address is every interface."""
    if isinstance(entry, Mapping):
        return str(entry.get("host_ip", "")), str(entry.get("published", ""))
    text = str(entry).partition("/")[0]
    if text.startswith("["):
        address, _, rest = text[1:].partition("]:")
        return address, rest.partition(":")[0]
    parts = text.split(":")
    if len(parts) == 3:
        return parts[0], parts[1]
    return "", parts[0] if len(parts) == 2 else ""


@pytest.mark.parametrize("service", ["redis", "flower"])
def test_ports_are_published_on_loopback_unless_the_user_asks(service: str) -> None:
    config = resolved(GIVEN)
    assert all(body.get("network_mode") != "host" for body in config["services"].values())
    entries = config["services"][service].get("ports") or []
    for entry in entries:
        address, _ = _published(entry)
        assert address in LOOPBACK, f"{service} is published on {address or 'every interface'}: {entry}"
    prefix = service.upper()
    asked = resolved({**GIVEN, f"{prefix}_BIND": "192.0.2.7", f"{prefix}_PORT": "16379"})
    assert [_published(e) for e in asked["services"][service].get("ports") or []] in (
        [],
        [("192.0.2.7", "16379")],
    ), f"{prefix}_BIND and {prefix}_PORT choose where {service} is published"


def test_the_port_parser_sees_every_interface_where_compose_does() -> None:
    assert _published("6379:6379") == ("", "6379")
    assert _published("6379") == ("", "")
    assert _published("0.0.0.0:6379:6379") == ("0.0.0.0", "6379")
    assert _published("[::1]:6379:6379/tcp") == ("::1", "6379")
    assert _published({"target": 6379, "published": 6379}) == ("", "6379")


def test_readme_says_the_passwords_are_required_and_where_services_listen() -> None:
    readme = (ROOT / "README.md").read_text()
    docker = readme.partition("### Docker")[2].partition("\n## ")[0]
    for name in sorted(GIVEN):
        row = next((line for line in docker.splitlines() if line.startswith(f"| `{name}` |")), "")
        assert row.split("|")[2].strip() == "required", f"README's Docker table: {name} must be required"
    assert "127.0.0.1" in docker
    for name in ("REDIS_BIND", "REDIS_PORT", "FLOWER_BIND", "FLOWER_PORT"):
        assert f"`{name}`" in docker
    text = (ROOT / "docker-compose.yml").read_text()
    assert "change-me" not in docker and "change-me" not in text, "no example password to copy"


def test_interpolation_is_compose_s() -> None:
    env = {"A": "x", "E": ""}
    assert interpolate("${A}-${B:-d}-${E:-d}-${E-d}-$$A-${A:?m}-$A", env) == "x-d-d--$A-x-x"
    with pytest.raises(Missing, match="required variable E is missing a value: set E"):
        interpolate("${E:?set E}", env)
    assert interpolate("${E?m}", env) == ""
