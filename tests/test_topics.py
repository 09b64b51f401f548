"""The topics `heatreplay topics` creates, against the real (embedded) broker."""

from __future__ import annotations

import uuid

from confluent_kafka.admin import ConfigResource

from app.kafka_io import admin, delete_topics, ensure_topics
from app.settings import Settings


def _retention_ms(s: Settings, topic: str) -> str:
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    client = admin(s)  # held until the answer is in: a collected client cancels it
    configs = client.describe_configs([resource])[resource].result(timeout=10)
    return str(configs["retention.ms"].value)


def test_dead_letters_are_kept_longer_than_pings(settings: Settings) -> None:
    tag = uuid.uuid4().hex[:8]
    s = settings.with_(
        topic_pings=f"pings-{tag}",
        topic_dlq=f"pings-{tag}.dlq",
        topic_retention_ms=3_600_000,
        dlq_retention_ms=86_400_000,
    )
    try:
        assert ensure_topics(s) == []
        assert _retention_ms(s, s.topic_pings) == "3600000"
        assert _retention_ms(s, s.topic_dlq) == "86400000"
    finally:
        delete_topics(s, [s.topic_pings, s.topic_dlq])


def test_an_existing_topic_with_other_partitions_is_reported_not_changed(
    settings: Settings,
) -> None:
    # the fixture's topics exist with 2 partitions
    notes = ensure_topics(settings.with_(topic_partitions=6))
    assert len(notes) == 1
    assert f"topic {settings.topic_pings} exists with 2 partitions" in notes[0]
    assert "TOPIC_PARTITIONS=6" in notes[0]
    topic = admin(settings).list_topics(timeout=10).topics[settings.topic_pings]
    assert len(topic.partitions) == 2
    assert ensure_topics(settings) == []
