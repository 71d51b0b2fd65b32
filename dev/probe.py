#!/usr/bin/env python3
"""Readiness probes for the local stack: exit 0 only when the part really answers.

    probe.py kafka HOST:PORT        create topic _locus_stack_probe if needed, produce one record, read it back
    probe.py cql HOST:PORT VERSION  CQL handshake at protocol VERSION (3 or 4) and a query of system.local
"""
import socket
import struct
import sys
import time
import uuid


def probe_kafka(bootstrap: str) -> None:
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = "_locus_stack_probe"
    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 3000})
    if topic not in admin.list_topics(timeout=3).topics:
        futures = admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        try:
            futures[topic].result(5)
        except Exception as err:  # noqa: BLE001 - an existing topic is fine
            if "TOPIC_ALREADY_EXISTS" not in str(err):
                raise
    marker = uuid.uuid4().hex.encode()
    producer = Producer({"bootstrap.servers": bootstrap, "message.timeout.ms": 5000})
    delivered = []
    producer.produce(topic, marker, on_delivery=lambda err, msg: delivered.append((err, msg)))
    producer.flush(6)
    if not delivered or delivered[0][0] is not None:
        raise SystemExit(f"produce failed: {delivered}")
    offset = delivered[0][1].offset()
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "_locus_stack_probe",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, 0, offset)])
    deadline = time.time() + 10
    while time.time() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None and msg.value() == marker:
            consumer.close()
            return
    consumer.close()
    raise SystemExit("consumed nothing back")


def cql_frame(version: int, stream: int, opcode: int, body: bytes) -> bytes:
    return struct.pack(">BBhBi", version, 0, stream, opcode, len(body)) + body


def cql_string(s: str) -> bytes:
    b = s.encode()
    return struct.pack(">H", len(b)) + b


def cql_read(sock: socket.socket) -> tuple[int, bytes]:
    header = b""
    while len(header) < 9:
        chunk = sock.recv(9 - len(header))
        if not chunk:
            raise SystemExit("connection closed")
        header += chunk
    _version, _flags, _stream, opcode, length = struct.unpack(">BBhBi", header)
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        if not chunk:
            raise SystemExit("connection closed")
        body += chunk
    return opcode, body


def probe_cql(addr: str, version: int) -> None:
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        startup = struct.pack(">H", 1) + cql_string("CQL_VERSION") + cql_string("3.0.0")
        sock.sendall(cql_frame(version, 1, 0x01, startup))
        opcode, body = cql_read(sock)
        if opcode != 0x02:  # READY
            raise SystemExit(f"STARTUP answered with opcode {opcode:#x}: {body!r}")
        query = "SELECT release_version FROM system.local WHERE key = 'local'"
        body = struct.pack(">i", len(query.encode())) + query.encode() + struct.pack(">HB", 1, 0)
        sock.sendall(cql_frame(version, 2, 0x07, body))
        opcode, body = cql_read(sock)
        if opcode != 0x08:  # RESULT
            raise SystemExit(f"QUERY answered with opcode {opcode:#x}: {body!r}")


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    part, addr = sys.argv[1], sys.argv[2]
    if part == "kafka":
        probe_kafka(addr)
    elif part == "cql":
        probe_cql(addr, int(sys.argv[3]) if len(sys.argv) > 3 else 4)
    else:
        raise SystemExit(f"unknown probe {part!r}")


if __name__ == "__main__":
    main()
