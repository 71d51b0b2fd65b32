"""The local registry as Confluent's own Python client sees it (confluent-kafka's
SchemaRegistryClient and Avro serde, on fastavro). Run by `make test` with pytest."""
import json
import os
import pathlib
import uuid

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

URL = os.environ.get("LOCUS_REGISTRY_URL", "http://127.0.0.1:8081")
AVSC = (pathlib.Path(__file__).resolve().parents[3] / "schemas" / "location.avsc").read_text()


@pytest.fixture
def client():
    return SchemaRegistryClient({"url": URL})


@pytest.fixture
def topic():
    return f"py-{uuid.uuid4().hex}"


def fix(seq):
    return {
        "tenant": "acme", "user_id": "u1", "device_id": "d1", "seq": seq,
        "ts": 1_760_000_000_000, "lat": 52.52, "lon": 13.40, "accuracy_m": 3.5,
        "altitude_m": None, "speed_mps": None, "heading_deg": None, "battery_pct": 90,
        "activity": None, "source": "gps", "received_at": 1_760_000_000_050,
    }


def test_register_lookup_and_fetch(client, topic):
    subject = f"{topic}-value"
    schema_id = client.register_schema(subject, Schema(AVSC, "AVRO"))
    assert client.register_schema(subject, Schema(AVSC, "AVRO")) == schema_id
    latest = client.get_latest_version(subject)
    assert latest.version == 1 and latest.schema_id == schema_id
    assert json.loads(client.get_schema(schema_id).schema_str) == json.loads(AVSC)
    found = client.lookup_schema(subject, Schema(AVSC, "AVRO"))
    assert found.schema_id == schema_id and found.version == 1
    assert subject in client.get_subjects()
    assert client.get_versions(subject) == [1]


def test_avro_serde_round_trip(client, topic):
    ser = AvroSerializer(client, AVSC)
    de = AvroDeserializer(client)
    ctx = SerializationContext(topic, MessageField.VALUE)
    payload = ser(fix(7), ctx)
    assert payload[0] == 0  # Confluent framing
    decoded = de(payload, ctx)
    assert decoded["seq"] == 7 and decoded["lat"] == pytest.approx(52.52)


def test_compatibility_and_errors(client, topic):
    subject = f"{topic}-value"
    client.register_schema(subject, Schema(AVSC, "AVRO"))
    evolved = json.loads(AVSC)
    evolved["fields"].append({"name": "floor", "type": ["null", "int"], "default": None})
    assert client.test_compatibility(subject, Schema(json.dumps(evolved), "AVRO"))
    breaking = json.loads(AVSC)
    breaking["fields"].append({"name": "zone", "type": "string"})
    assert not client.test_compatibility(subject, Schema(json.dumps(breaking), "AVRO"))
    with pytest.raises(SchemaRegistryError) as err:
        client.register_schema(subject, Schema(json.dumps(breaking), "AVRO"))
    assert err.value.http_status_code == 409

    assert client.set_compatibility(subject, "NONE")["compatibility"] == "NONE"
    assert client.get_compatibility(subject) == "NONE"
    client.register_schema(subject, Schema(json.dumps(breaking), "AVRO"))

    with pytest.raises(SchemaRegistryError) as err:
        client.get_latest_version(f"missing-{topic}")
    assert err.value.error_code == 40401
    with pytest.raises(SchemaRegistryError) as err:
        client.get_version(subject, 99)
    assert err.value.error_code == 40402
