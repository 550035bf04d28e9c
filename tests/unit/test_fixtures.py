"""Which infrastructure the integration tests use, decided from the environment."""

import pytest

from tests.conftest import KAFKA_IMAGE, MONGODB_IMAGE, external_infrastructure


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
