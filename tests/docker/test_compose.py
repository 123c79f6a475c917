"""The compose file's promises, read statically (no Docker daemon here): every dependency waits for a healthy
service, only the Prefect UI/API is published and only on loopback, the API is behind an auth string, and the
image can curate, augment and train."""

from __future__ import annotations

from pathlib import Path

import yaml

DOCKER = Path(__file__).resolve().parents[2] / "docker"


def _services() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]


def test_dependencies_wait_for_healthy_services():
    services = _services()
    for name, service in services.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert condition == {"condition": "service_healthy"}, (name, dependency)
            assert "healthcheck" in services[dependency], dependency


def test_only_the_prefect_api_is_published_and_only_on_loopback():
    for name, service in _services().items():
        ports = service.get("ports") or []
        if name == "prefect":
            assert ports == ["127.0.0.1:4200:4200"]
        else:
            assert not ports, name
    head = _services()["ray-head"]["entrypoint"]
    assert "--include-dashboard=false" in head


def test_the_api_needs_the_auth_string_and_clients_send_it():
    services = _services()
    assert services["prefect"]["environment"]["PREFECT_SERVER_API_AUTH_STRING"]
    assert "postgresql+asyncpg://" in services["prefect"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    for name in ("serve", "ray-head", "ray-worker", "curate"):
        assert services[name]["environment"]["PREFECT_API_AUTH_STRING"], name
    assert services["serve"]["environment"]["RAY_ADDRESS"] == "ray-head:6379"


def test_the_image_installs_the_training_and_augmentation_extras():
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert '".[paper,train,augment]"' in dockerfile
    for package in ("curation", "flows", "training", "inference", "metrics"):
        assert f"COPY {package} {package}" in dockerfile
