"""Topic specs: what each topic is created with."""

import pytest

from shared.messaging.topics import declared_topics, min_insync_replicas, specs_for


@pytest.mark.parametrize(("replicas", "in_sync"), [(1, 1), (2, 2), (3, 2), (5, 3)])
def test_min_insync_replicas_is_a_majority_of_the_replication_factor(replicas: int, in_sync: int) -> None:
    assert min_insync_replicas(replicas) == in_sync


def test_topics_are_created_with_the_min_insync_replicas_of_their_replication_factor() -> None:
    for replicas, in_sync in ((1, "1"), (3, "2")):
        for spec in declared_topics(3):
            assert spec.new_topic(replicas).topic_configs["min.insync.replicas"] == in_sync


def test_event_topics_keep_14_days_and_dead_letter_topics_30_in_one_partition() -> None:
    event, dead_letters = specs_for("customer.registered", 3)
    assert (event.name, event.partitions, event.retention_ms) == ("customer.registered", 3, 14 * 86_400_000)
    assert (dead_letters.name, dead_letters.partitions, dead_letters.retention_ms) == (
        "customer.registered.dlq", 1, 30 * 86_400_000)


def test_a_replication_factor_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        min_insync_replicas(0)
