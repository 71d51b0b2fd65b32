#!/usr/bin/env python3
"""Locus capacity model: how many of each part a fleet needs, from measured unit costs.

    python3 loadtest/capacity/model.py            # print the tables
    python3 loadtest/capacity/model.py --write    # regenerate them in docs/capacity.md
    python3 loadtest/capacity/model.py --check    # exit 1 if docs/capacity.md is stale

Every input is in inputs.toml with its source; nothing here is a number of its own except
unit conversions.
"""

import argparse
import math
import pathlib
import sys
import tomllib

HERE = pathlib.Path(__file__).resolve().parent
DOC = HERE.parent.parent / "docs" / "capacity.md"
BEGIN, END = "<!-- capacity:begin -->", "<!-- capacity:end -->"


def load(path=HERE / "inputs.toml"):
    with open(path, "rb") as f:
        return tomllib.load(f)


def v(cfg, key):
    group, name = key.split(".")
    return cfg[group][name]["value"]


def size(cfg, devices, interval_s):
    """The parts one fleet needs, as a dict of named numbers."""
    plan = cfg["plan"]
    fleet = cfg["fleet"]
    head = plan["cpu_headroom"]
    fixes = devices / interval_s
    out = {"devices": devices, "interval_s": interval_s, "fixes_per_s": fixes}

    def replicas(cores):
        return max(plan["min_replicas"], math.ceil(cores / (plan["cores_per_pod"] * head)))

    # Locus stages: CPU per fix times the rate, at the headroom.
    for stage in ("bridge", "history", "cache"):
        cores = fixes * v(cfg, f"unit.{stage}_us_per_fix") / 1e6
        out[f"{stage}_cores"] = cores
        out[f"{stage}_replicas"] = replicas(cores)
    # Push: every replica reads every fix (one reader task: at most one core), passing over
    # the tenants it does not serve by their header, then sends its dashboards' events.
    events = fleet["dashboards"] * fleet["events_per_dashboard_per_s"]
    budget = plan["cores_per_pod"] * head
    read_cores = fixes * v(cfg, "unit.push_read_us_per_fix") / 1e6
    # Beyond one reader's budget the topic must be split (tenant groups on topics of their
    # own, a push deployment each): how many splits.
    splits = max(1, math.ceil(read_cores / budget))
    out["push_topic_splits"] = splits
    read_per_replica = read_cores / splits
    send_cores = events * v(cfg, "unit.push_us_per_event") / 1e6
    by_streams = math.ceil(fleet["dashboards"] / v(cfg, "unit.push_streams_per_replica"))
    by_cpu = math.ceil(send_cores / max(budget - read_per_replica, 1e-9 + budget * 0.1))
    out["push_replicas"] = max(plan["min_replicas"] * splits, by_streams, by_cpu)
    out["push_read_share_of_core"] = read_per_replica
    out["push_events_per_s"] = events

    # Kafka: bytes, partitions, brokers, retention.
    rec = v(cfg, "unit.record_bytes")
    rf = plan["replication_factor"]
    ingress = fixes * rec / 1e6
    # history, cache, and every push replica (each reads its split of the topic).
    consumers = 2 + out["push_replicas"] / out["push_topic_splits"]
    out["kafka_ingress_mb_s"] = ingress
    out["kafka_egress_mb_s"] = ingress * (consumers + rf - 1)
    out["kafka_partitions"] = max(
        plan["min_partitions"],
        math.ceil(fixes / plan["fixes_per_s_per_partition"]),
        out["history_replicas"],
        out["cache_replicas"],
    )
    nic = v(cfg, "public.kafka_broker_network_mb_per_s") * head
    out["kafka_brokers"] = max(
        rf,
        math.ceil(ingress / (v(cfg, "public.kafka_broker_mb_per_s") * head)),
        math.ceil(max(ingress * rf, out["kafka_egress_mb_s"]) / nic),
    )
    out["kafka_retained_tb"] = ingress * 1e6 * 86_400 * plan["retention_days"] * rf / 1e12

    # Scylla: one row per fix, times the replication factor.
    srf = plan["scylla_replication_factor"]
    writes = fixes * srf
    cores = writes / (v(cfg, "public.scylla_writes_per_core") * head)
    out["scylla_writes_per_s"] = writes
    out["scylla_nodes"] = max(srf, math.ceil(cores / plan["scylla_cores_per_node"]))
    rows = fixes * 86_400 * plan["history_ttl_days"]
    out["scylla_stored_tb"] = rows * v(cfg, "unit.history_bytes_per_row") * srf / 1e12

    # Redis: one update per fix; every device held.
    by_cpu = math.ceil(fixes * v(cfg, "unit.redis_us_per_update") / 1e6 / head)
    mem_gib = devices * v(cfg, "unit.redis_bytes_per_device") / 2**30
    by_mem = math.ceil(mem_gib / plan["redis_memory_per_shard_gib"])
    out["redis_memory_gib"] = mem_gib
    out["redis_shards"] = max(1, by_cpu, by_mem)

    # The MQTT tier (not Locus): connections and QoS 1 messages per node.
    out["mqtt_nodes"] = max(
        2,
        math.ceil(devices / (v(cfg, "public.mqtt_node_connections") * head)),
        math.ceil(fixes / (v(cfg, "public.mqtt_node_qos1_per_s") * head)),
    )
    out["locus_cores"] = (
        out["bridge_replicas"] + out["history_replicas"] + out["cache_replicas"]
        + out["push_replicas"]
    ) * plan["cores_per_pod"]
    return out


def fmt(x):
    if isinstance(x, int):
        return f"{x:,}"
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


ROWS = [
    ("fixes/s", "fixes_per_s"),
    ("Kafka partitions of `locations`", "kafka_partitions"),
    ("Kafka brokers", "kafka_brokers"),
    ("Kafka ingress, MB/s (before compression)", "kafka_ingress_mb_s"),
    ("Kafka egress incl. replication, MB/s", "kafka_egress_mb_s"),
    ("Kafka retained, TB (all replicas)", "kafka_retained_tb"),
    ("bridge replicas", "bridge_replicas"),
    ("history replicas", "history_replicas"),
    ("cache replicas", "cache_replicas"),
    ("push replicas (for the dashboards)", "push_replicas"),
    ("push: topic splits by tenant group", "push_topic_splits"),
    ("push: share of a core to read the topic", "push_read_share_of_core"),
    ("Locus cores in all", "locus_cores"),
    ("Scylla writes/s (all replicas)", "scylla_writes_per_s"),
    ("Scylla nodes", "scylla_nodes"),
    ("Scylla stored, TB (all replicas)", "scylla_stored_tb"),
    ("Redis shards", "redis_shards"),
    ("Redis memory, GiB", "redis_memory_gib"),
    ("MQTT broker nodes (32 cores)", "mqtt_nodes"),
]


def tables(cfg):
    fleet = cfg["fleet"]
    lines = ["#### 1,000,000 devices\n"]
    cols = [size(cfg, 1_000_000, i) for i in fleet["intervals_s"]]
    lines.append("| | " + " | ".join(f"one fix / {i} s" for i in fleet["intervals_s"]) + " |")
    lines.append("|---" * (len(cols) + 1) + "|")
    for label, key in ROWS:
        lines.append(f"| {label} | " + " | ".join(fmt(c[key]) for c in cols) + " |")
    lines.append("")
    for interval in fleet["intervals_s"]:
        cols = [size(cfg, d, interval) for d in fleet["devices"]]
        lines.append(f"#### One fix per device every {interval} s\n")
        head = " | ".join(f"{d:,} devices" for d in fleet["devices"])
        lines.append(f"| | {head} |")
        lines.append("|---" * (len(cols) + 1) + "|")
        for label, key in ROWS:
            lines.append(f"| {label} | " + " | ".join(fmt(c[key]) for c in cols) + " |")
        lines.append("")
    lines.append("#### Inputs\n")
    lines.append("| input | value | what | source | date |")
    lines.append("|---|---|---|---|---|")
    for group in ("unit", "public"):
        for name, i in cfg[group].items():
            lines.append(f"| `{name}` | {fmt(i['value'])} | {i['what']} | {i['source']} | {i['date']} |")
    plan = ", ".join(f"{k} = {fmt(x)}" for k, x in cfg["plan"].items())
    lines.append(f"\nPlan: {plan}. Dashboards: {fleet['dashboards']:,}, "
                 f"{fleet['events_per_dashboard_per_s']} events/s each.")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="regenerate docs/capacity.md")
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/capacity.md is stale")
    args = ap.parse_args()
    generated = tables(load())
    if not (args.write or args.check):
        sys.stdout.write(generated)
        return 0
    doc = DOC.read_text()
    start, end = doc.index(BEGIN) + len(BEGIN), doc.index(END)
    fresh = doc[:start] + "\n" + generated + doc[end:]
    if args.check:
        if fresh != doc:
            print("docs/capacity.md is stale: run python3 loadtest/capacity/model.py --write")
            return 1
        return 0
    DOC.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
