"""Docker cannot run here, so check the deployment files against the package itself."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def _compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _expand(arg: str) -> str:
    """Substitute ${VAR:-default} the way compose does, with the defaults."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", arg)


def _tilechord_commands() -> list[tuple[str, list[str]]]:
    services = _compose()["services"]
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


def test_compose_runs_redis_workers_and_flower() -> None:
    services = _compose()["services"]
    assert {"redis", "worker", "flower"} <= set(services)
    assert "noeviction" in [str(a) for a in services["redis"]["command"]]
    assert "build" in services["worker"]
    assert "container_name" not in services["worker"]  # so that --scale worker=N works
    env = services["worker"]["environment"]
    assert env["TILECHORD_REDIS_URL"].startswith("redis://")


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


def test_compose_variables_are_ones_tilechord_reads() -> None:
    config = (ROOT / "src" / "tilechord" / "config.py").read_text()
    env = _compose()["services"]["worker"]["environment"]
    for name in env:
        assert f'"{name}"' in config, f"{name} is set by compose but never read"
