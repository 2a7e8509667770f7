"""The deployment files against the package and the README (their topology runs in tests/test_compose.py)."""

from __future__ import annotations

import re

from deployment import ROOT, compose


def test_compose_runs_redis_workers_and_flower() -> None:
    services = compose()["services"]
    assert {"redis", "worker", "flower"} <= set(services)
    assert "noeviction" in [str(a) for a in services["redis"]["command"]]
    assert "build" in services["worker"]
    assert "container_name" not in services["worker"]  # so that --scale worker=N works
    env = services["worker"]["environment"]
    assert env["TILECHORD_REDIS_URL"].startswith("redis://")


def test_compose_variables_are_ones_tilechord_reads() -> None:
    config = (ROOT / "src" / "tilechord" / "config.py").read_text()
    env = compose()["services"]["worker"]["environment"]
    for name in env:
        assert f'"{name}"' in config, f"{name} is set by compose but never read"


def test_readme_documents_every_variable_the_compose_file_reads() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    readme = (ROOT / "README.md").read_text()
    for name in sorted(set(re.findall(r"\$\{([A-Z_]+)", text))):
        assert f"`{name}`" in readme, f"README does not document {name}"
