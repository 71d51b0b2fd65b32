"""Decodes Confluent-framed Avro values with Confluent's own Python client.

stdin: a JSON list of hex-encoded record values; stdout: a JSON list of decoded records.
Used by the bridge test to check that a non-Rust Confluent consumer reads what Locus writes.
"""
import json
import os
import sys

from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

client = SchemaRegistryClient({"url": os.environ.get("LOCUS_REGISTRY_URL", "http://127.0.0.1:8081")})
deserializer = AvroDeserializer(client)
topic = sys.argv[1]
ctx = SerializationContext(topic, MessageField.VALUE)
values = json.load(sys.stdin)
json.dump([deserializer(bytes.fromhex(v), ctx) for v in values], sys.stdout, default=str)
