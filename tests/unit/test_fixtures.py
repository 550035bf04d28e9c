"""Which infrastructure the integration tests use, decided from the environment."""

from collections.abc import Callable

import pytest

from tests.conftest import KAFKA_IMAGE, MONGODB_IMAGE, external_infrastructure, infrastructure_kind


def test_both_variables_set_name_existing_infrastructure() -> None:
    environ = {"KAFKA_BOOTSTRAP_SERVERS": "broker:9092", "MONGODB_URI": "mongodb://store/"}
    assert external_infrastructure(environ) == ("broker:9092", "mongodb://store/")


def test_neither_set_lets_the_tests_start_their_own() -> None:
    assert external_infrastructure({}) is None


@pytest.mark.parametrize(
    ("environ", "missing"),
    [({"KAFKA_BOOTSTRAP_SERVERS": "broker:9092"}, "MONGODB_URI"), ({"MONGODB_URI": "mongodb://store/"}, "KAFKA")],
)
def test_only_one_of_them_set_is_an_error_that_names_the_missing_one(environ: dict[str, str], missing: str) -> None:
    with pytest.raises(ValueError, match=f"but {missing}.* is not"):
        external_infrastructure(environ)


def test_container_images_are_pinned() -> None:
    for image in (KAFKA_IMAGE, MONGODB_IMAGE):
        name, _, tag = image.partition(":")
        assert tag and tag != "latest", image


def docker(answers: bool) -> Callable[[], bool]:
    asked: list[bool] = []

    def ping() -> bool:
        asked.append(True)
        return answers

    ping.asked = asked  # type: ignore[attr-defined]
    return ping


def test_the_environment_comes_first_and_docker_is_not_even_asked() -> None:
    ping = docker(answers=True)
    environ = {"KAFKA_BOOTSTRAP_SERVERS": "broker:9092", "MONGODB_URI": "mongodb://store/"}
    assert infrastructure_kind(environ, ping) == "environment"
    assert ping.asked == []  # type: ignore[attr-defined]


def test_containers_come_next_when_a_docker_engine_answers() -> None:
    assert infrastructure_kind({}, docker(answers=True)) == "testcontainers"


def test_the_local_infrastructure_comes_last() -> None:
    assert infrastructure_kind({}, docker(answers=False)) == "local"


def test_half_an_environment_is_refused_before_anything_is_started() -> None:
    ping = docker(answers=True)
    with pytest.raises(ValueError, match="MONGODB_URI"):
        infrastructure_kind({"KAFKA_BOOTSTRAP_SERVERS": "broker:9092"}, ping)
    assert ping.asked == []  # type: ignore[attr-defined]
