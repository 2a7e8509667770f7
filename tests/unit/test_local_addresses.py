"""Where the local cluster listens (``tilechord up --listen``), checked before anything starts.

No process is started here: addresses are parsed, URLs built and bad input refused, in
this process.  ``tests/test_exit_and_listen.py`` runs the real thing.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from tilechord.cli import cli
from tilechord.errors import ClusterError
from tilechord.local import EmbeddedRedis, Flower, LocalCluster, check_address
from tilechord.local.procs import connect_host, free_port, url_host

#: TEST-NET-2 (RFC 5737): documentation only, so no machine has it
FOREIGN = "198.51.100.7"


@pytest.mark.parametrize(
    ("given", "parsed"),
    [("127.0.0.2", "127.0.0.2"), (" 0.0.0.0 ", "0.0.0.0"), ("[::1]", "::1"), ("::", "::")],
)
def test_listen_addresses_are_ip_literals(given: str, parsed: str) -> None:
    assert check_address(given) == parsed


@pytest.mark.parametrize("given", ["localhost", "redis-host", "10.0.0", "", "127.0.0.1:6379"])
def test_a_name_or_a_malformed_address_is_refused_in_one_line(given: str) -> None:
    with pytest.raises(ClusterError, match="give an IP address of this machine") as caught:
        check_address(given)
    assert "\n" not in str(caught.value)


def test_a_wildcard_is_reached_through_loopback_and_ipv6_is_bracketed() -> None:
    assert connect_host("0.0.0.0") == "127.0.0.1"
    assert connect_host("::") == "::1"
    assert connect_host("10.1.2.3") == "10.1.2.3"
    assert url_host("::1") == "[::1]" and url_host("10.1.2.3") == "10.1.2.3"


def test_an_address_of_another_machine_is_refused_before_valkey_starts() -> None:
    with pytest.raises(ClusterError, match=f"cannot listen on {FOREIGN}: .*address of this machine"):
        free_port(FOREIGN)


def test_embedded_redis_urls_for_this_machine_and_for_others() -> None:
    server = EmbeddedRedis(bind="0.0.0.0", port=6390, password="pw")
    assert server.bind == "0.0.0.0"
    assert server.url == "redis://:pw@127.0.0.1:6390/0"  # our own workers go through loopback
    assert server.url_for("192.168.1.20") == "redis://:pw@192.168.1.20:6390/0"
    assert EmbeddedRedis(bind="::", port=6390, password="pw").url == "redis://:pw@[::1]:6390/0"
    assert EmbeddedRedis(port=6390, password="pw").url == "redis://:pw@127.0.0.1:6390/0"  # the default
    with pytest.raises(ClusterError):
        EmbeddedRedis(bind="redis-host")


def test_flower_beyond_loopback_gets_a_password_and_hides_it() -> None:
    assert Flower("redis://:pw@127.0.0.1:1/0").password is None  # loopback: open API, as before
    exposed = Flower("redis://:broker-secret@127.0.0.1:1/0", address="0.0.0.0")
    assert exposed.password and len(exposed.password) >= 16
    assert Flower("redis://:x@127.0.0.1:1/0", address="0.0.0.0").password != exposed.password
    assert exposed._redact(f"admin:{exposed.password} broker-secret") == "admin:*** ***"
    assert Flower("redis://:pw@127.0.0.1:1/0", address="0.0.0.0", password="given").password == "given"


def test_a_cluster_not_started_has_no_public_url() -> None:
    cluster = LocalCluster(listen="0.0.0.0")
    with pytest.raises(ClusterError):
        _ = cluster.public_url
    assert cluster.public_flower_url is None


def test_up_help_says_where_it_listens_and_what_stopping_does() -> None:
    done = CliRunner().invoke(cli, ["up", "--help"], prog_name="tilechord")
    assert done.exit_code == 0
    text = " ".join(done.output.split())
    assert "--listen ADDR" in text and "--flower-listen ADDR" in text
    assert "[default: 127.0.0.1]" in text
    assert "abandoned" in text and "finish first" not in text


@pytest.mark.parametrize("option", ["--listen", "--flower-listen"])
def test_up_refuses_a_bad_address_before_starting_anything(option: str) -> None:
    done = CliRunner().invoke(cli, ["up", "--no-flower", option, "redis-host"], prog_name="tilechord")
    assert done.exit_code == 2
    assert f"Invalid value for '{option}'" in done.output
    assert "give an IP address of this machine" in done.output
