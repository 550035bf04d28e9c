"""docker-compose cannot run here (no Docker engine): check what can be checked without one."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def built_services() -> list[str]:
    return sorted(p.parent.name for p in (ROOT / "services").glob("*/__main__.py"))


def test_every_service_is_a_process() -> None:
    assert built_services() == ["consent", "contracts", "identity", "notifications", "restitution"]


def test_compose_runs_every_built_service_with_the_command_make_run_uses() -> None:
    services = compose()["services"]
    built = built_services()
    for name in built:
        assert name in services, f"docker-compose.yml does not run services/{name}"
        assert services[name]["command"] == ["python", "-m", f"services.{name}"]
        assert services[name]["environment"]["SERVICE_NAME"] == name


def test_every_compose_service_that_names_a_module_names_one_that_exists() -> None:
    for name, service in compose()["services"].items():
        command = service.get("command", [])
        if command[:2] == ["python", "-m"]:
            module = ROOT / Path(*command[2].split("."))
            assert (module / "__main__.py").exists() or module.with_suffix(".py").exists(), name


def test_services_wait_for_healthy_infrastructure_and_created_topics() -> None:
    services = compose()["services"]
    for name in ("kafka", "mongodb"):
        assert "healthcheck" in services[name]
    for name in built_services():
        depends = services[name]["depends_on"]
        assert depends["kafka"]["condition"] == "service_healthy"
        assert depends["mongodb"]["condition"] == "service_healthy"
        assert depends["topics"]["condition"] == "service_completed_successfully"


def test_the_image_serves_health_on_the_port_compose_publishes() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "HTTP_PORT=8000" in dockerfile and "/healthz" in dockerfile
    for name in built_services():
        assert compose()["services"][name]["ports"][0].endswith(":8000")


def test_make_run_gives_a_service_its_own_store_when_told_and_the_shared_one_otherwise() -> None:
    from deploy.run import base_env, service_env

    base = base_env({"CONTRACTS_MONGODB_URI": "mongodb://contracts-store:27017/"}, "127.0.0.1:9092", "mongodb://x/")
    assert service_env("contracts", base, "")["MONGODB_URI"] == "mongodb://contracts-store:27017/"
    assert service_env("identity", base, "")["MONGODB_URI"] == "mongodb://x/"


def test_only_the_holders_of_secrets_get_the_event_secret_keys_in_compose() -> None:
    document = compose()
    assert "EVENT_SECRET_KEYS" not in document["x-service"]["environment"], "not in what every service shares"
    for name, service in document["services"].items():
        environment = service.get("environment") or {}
        assert ("EVENT_SECRET_KEYS" in environment) == (name in {"identity", "notifications"}), name


def test_make_run_gives_the_event_secret_keys_to_identity_and_notifications_only() -> None:
    from deploy.run import SECRET_HOLDERS, base_env, service_env

    assert SECRET_HOLDERS == {"identity", "notifications"}
    base = base_env({"EVENT_SECRET_KEYS": "local-1:c2VjcmV0", "PATH": "/usr/bin"}, "127.0.0.1:9092", "mongodb://x/")
    assert "EVENT_SECRET_KEYS" not in base, "sinks and topic creation get the base environment"
    assert base["PATH"] == "/usr/bin" and base["KAFKA_BOOTSTRAP_SERVERS"] == "127.0.0.1:9092"
    for name in ("identity", "notifications"):
        assert service_env(name, base, "local-1:c2VjcmV0")["EVENT_SECRET_KEYS"] == "local-1:c2VjcmV0"
    for name in ("contracts", "restitution", "consent"):
        assert "EVENT_SECRET_KEYS" not in service_env(name, base, "local-1:c2VjcmV0"), name
