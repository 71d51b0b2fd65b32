#!/usr/bin/env python3
"""locus scenario runner: the whole pipeline under load on the local stack, one process per
stage replica, and a report of what each part cost and whether every fix arrived everywhere.

    python3 loadtest/scenario/run.py --rate 2000 --devices 10000 --secs 60
    python3 loadtest/scenario/run.py --rate 1000 --secs 90 --history 2 \
        --event 30:add:history --event 60:term:history --event 75:kill:cache

What one run does:
1. a topic pair and a keyspace, Redis prefix and consumer groups of its own (nothing shared
   with other runs or tests); `locus topics apply`, `locus schemas register`;
2. `locus bridge` x M, `locus history` x N, `locus cache` x N, `locus push` x P, each its
   own process with its own HTTP port; one SSE stream per push replica (all the tenant's
   users, `push.user_rate_per_s = 0` so every fix is sent);
3. `locus-sim` at --rate with --devices distinct devices for --secs, and the --event actions
   (add a replica, SIGTERM one, SIGKILL one) at their times;
4. a drain: until every stage applied every fix and every SSE stream saw every fix (or
   --drain-timeout);
5. `locus-audit`: every fix the simulator had acknowledged, looked up in Kafka, in
   Cassandra, in Redis (newest per user) and among what the SSE streams saw;
6. the report in --out: report.json, report.md, and SVG plots (rate, lag, p99 freshness
   per stage over time).

CPU per fix is CPU seconds (utime + stime from /proc) over the load and drain window divided
by the fixes in Kafka, per stage and per infrastructure process of the stack.
"""

import argparse
import http.client
import json
import math
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import svg  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]
STACK_PARTS = ["kafka", "registry", "cassandra", "cql", "redis", "mqtt"]
STAGES = ["bridge", "history", "cache", "push"]
TICK = os.sysconf("SC_CLK_TCK")


def die_with_parent():
    """In a child, before exec: SIGKILL when the runner dies, however it dies."""
    import ctypes
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def log(msg):
    print(f"[scenario] {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except (OSError, IndexError, ValueError):
        return None


def rss_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


METRIC = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$')


def scrape(port):
    """The process's /metrics as {(name, labels): value}."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    out = {}
    for line in text.splitlines():
        m = METRIC.match(line)
        if m:
            try:
                out[(m.group(1), m.group(2) or "")] = float(m.group(3))
            except ValueError:
                pass
    return out


def total(metrics, name, **labels):
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for (n, lab), v in metrics.items() if n == name and all(w in lab for w in want))


def buckets(metrics, name, stage):
    """Cumulative histogram buckets {le: count} of `name` for `stage`."""
    out = {}
    for (n, lab), v in metrics.items():
        if n == f"{name}_bucket" and f'stage="{stage}"' in lab:
            le = re.search(r'le="([^"]+)"', lab).group(1)
            out[math.inf if le == "+Inf" else float(le)] = v
    return out


def quantile(cum, q):
    """Quantile from cumulative buckets (linear within a bucket); None if empty."""
    if not cum:
        return None
    les = sorted(cum)
    n = cum[les[-1]]
    if n <= 0:
        return None
    rank, prev_le, prev_c = q * n, 0.0, 0.0
    for le in les:
        c = cum[le]
        if c >= rank:
            if le == math.inf:
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_c) / max(c - prev_c, 1e-9))
        prev_le, prev_c = le, c
    return prev_le


def minus(a, b):
    return {k: a.get(k, 0) - b.get(k, 0) for k in a}


class Proc:
    def __init__(self, name, stage, args, env, log_path, port=None):
        self.name, self.stage, self.port = name, stage, port
        self.log = open(log_path, "w")
        self.p = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=self.log,
                                  preexec_fn=die_with_parent)
        self.pid = self.p.pid
        self.cpu_at_exit = None
        self.last_cpu = 0.0

    def alive(self):
        return self.p.poll() is None

    def stop(self, sig=signal.SIGTERM, wait=30):
        if self.alive():
            self.p.send_signal(sig)
            try:
                self.p.wait(wait)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


class SseStream(threading.Thread):
    """One `/v1/stream` read to the end: the identity of every `fix` event, and its latency
    (receive time - the fix's event time, which the simulator sets to its publish time)."""

    def __init__(self, port, token, out_path):
        super().__init__(daemon=True)
        self.port, self.token = port, token
        self.out = open(out_path, "w", buffering=1)  # line-buffered: the audit reads it
        self.seen = set()
        self.reconnects = 0
        self.latencies_ms = []
        self.stop = threading.Event()
        self.error = None

    def run(self):
        while not self.stop.is_set():
            try:
                self.read()
            except (OSError, ValueError) as e:
                if self.stop.is_set():
                    return
                self.error = str(e)
                self.reconnects += 1
                time.sleep(0.5)

    def read(self):
        # Longer than the heartbeat (15 s): an idle stream is never mistaken for a dead one.
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        last = getattr(self, "last_id", None)
        headers = {"Last-Event-ID": last} if last else {}
        conn.request("GET", f"/v1/stream?access_token={self.token}", headers=headers)
        resp = conn.getresponse()
        if resp.status != 200:
            raise OSError(f"stream answered {resp.status}")
        kind, data, eid = None, None, None
        while not self.stop.is_set():
            line = resp.fp.readline()
            if not line:
                raise OSError("stream ended")
            line = line.rstrip(b"\n")
            if line.startswith(b"event: "):
                kind = line[7:]
            elif line.startswith(b"data: "):
                data = line[6:]
            elif line.startswith(b"id: "):
                eid = line[4:].decode()
            elif not line:
                if kind == b"fix" and data:
                    f = json.loads(data)
                    ident = (f["user_id"], f["device_id"], f["seq"])
                    if ident not in self.seen:
                        self.seen.add(ident)
                        self.latencies_ms.append(time.time() * 1000 - f["ts"])
                    self.out.write(f'{f["user_id"]} {f["device_id"]} {f["seq"]}\n')
                if eid:
                    self.last_id = eid
                kind, data, eid = None, None, None


class Scenario:
    def __init__(self, args):
        self.a = args
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.prefix = f"sc{stamp.replace('-', '')}{os.getpid() % 1000}"
        self.out = pathlib.Path(args.out or REPO / "loadtest" / "runs" / f"{stamp}-r{args.rate}")
        self.out.mkdir(parents=True, exist_ok=True)
        self.bins = pathlib.Path(args.bin_dir)
        self.tenant = f"{self.prefix}t"
        self.procs = []
        self.sim, self.sim_pid, self.sim_last = None, None, 0.0
        self.samples = []
        self.events_done = []
        self.streams = []
        self.locations = f"{self.prefix}-locations"
        self.env = dict(os.environ)
        self.env.update({
            "LOCUS_CONFIG": str(REPO / "dev" / "locus.dev.toml"),
            "LOCUS_TOPICS__FILE": str(self.out / "topics.yaml"),
            # The run's own partition count, over the dev config's cap for the local broker.
            "LOCUS_TOPICS__MAX_PARTITIONS": str(args.partitions),
            "LOCUS_TOPICS__LOCATIONS": self.locations,
            "LOCUS_TOPICS__DLQ": f"{self.prefix}-dlq",
            "LOCUS_LOG__FORMAT": "json",
            "LOCUS_SCYLLA__KEYSPACE": self.prefix.replace("-", "_"),
            "LOCUS_CACHE__KEY_PREFIX": self.prefix,
            "LOCUS_HISTORY__GROUP": f"{self.prefix}-history",
            "LOCUS_CACHE__GROUP": f"{self.prefix}-cache",
            "LOCUS_BRIDGE__SHARE_GROUP": f"{self.prefix}-bridge",
            "LOCUS_PUSH__USER_RATE_PER_S": "0",
        })
        for kv in args.set:
            k, v = kv.split("=", 1)
            self.env[k] = v
        (self.out / "topics.yaml").write_text(
            "topics:\n"
            f"  - name: {self.locations}\n    partitions: {args.partitions}\n"
            "    replication_factor: 1\n    min_insync_replicas: 1\n    retention_ms: 86400000\n"
            "    cleanup_policy: delete\n    compression: producer\n"
            f"  - name: {self.prefix}-dlq\n    partitions: 1\n    replication_factor: 1\n"
            "    min_insync_replicas: 1\n    retention_ms: 86400000\n    cleanup_policy: delete\n"
            "    compression: producer\n"
        )

    # -- processes ----------------------------------------------------------------------

    def locus(self, *args):
        return [str(self.bins / "locus"), *args]

    def start(self, stage):
        n = sum(1 for p in self.procs if p.stage == stage)
        name = f"{stage}-{n}"
        port = free_port()
        env = dict(self.env, LOCUS_HTTP__LISTEN=f"127.0.0.1:{port}")
        if stage == "bridge":
            env["LOCUS_BRIDGE__CLIENT_ID"] = f"{self.prefix}-{name}"
        p = Proc(name, stage, self.locus(stage), env, self.out / f"{name}.log", port)
        self.procs.append(p)
        return p

    def wait_ready(self, procs, timeout=120):
        deadline = time.time() + timeout
        for p in procs:
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{p.port}/readyz", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if not p.alive():
                    raise SystemExit(f"{p.name} exited during start-up: see {p.log.name}")
                if time.time() > deadline:
                    raise SystemExit(f"{p.name} not ready within {timeout} s: see {p.log.name}")
                time.sleep(0.2)

    def infra(self):
        run = pathlib.Path(os.environ.get("LOCUS_STACK_DIR", REPO / ".stack")) / "run"
        out = {}
        for part in STACK_PARTS:
            try:
                out[part] = int((run / f"{part}.pid").read_text().strip())
            except (OSError, ValueError):
                pass
        return out

    # -- sampling -----------------------------------------------------------------------

    def sample(self, t):
        s = {"t": t, "cpu": {}, "rss": {}, "applied": {}, "lag": {}, "fresh": {}, "produced": 0}
        for name, pid in self.infra_pids.items():
            s["cpu"][name] = cpu_seconds(pid)
        if self.sim_pid:
            s["cpu"]["simulator"] = self.sim_last = cpu_seconds(self.sim_pid) or self.sim_last
        for p in self.procs:
            c = cpu_seconds(p.pid) if p.alive() else None
            if c is not None:
                p.last_cpu = c
            s["cpu"][p.name] = p.last_cpu
            s["rss"][p.name] = rss_mib(p.pid) if p.alive() else None
            m = scrape(p.port) if p.alive() else None
            if m is None:
                continue
            if p.stage == "bridge":
                s["applied"][p.name] = total(m, "locus_bridge_fixes_produced_total")
                continue
            s["applied"][p.name] = total(m, "locus_stage_applied_records_total", stage=p.stage)
            s["lag"][p.name] = total(m, "locus_consumer_lag_records", stage=p.stage)
            s["fresh"][p.name] = buckets(m, "locus_stage_freshness_seconds", p.stage)
        s["sse"] = sum(len(st.seen) for st in self.streams)
        self.samples.append(s)
        s["produced"] = self.stage_applied(s, "bridge")
        return s

    def stage_applied(self, s, stage):
        """Records applied by a stage's replicas, counting those that have exited (their
        last value) so that a removed replica's work is not lost from the sum."""
        last = {}
        for x in self.samples:
            for name, v in x["applied"].items():
                last[name] = v
        return sum(v for n, v in last.items() if n.startswith(stage + "-"))

    # -- the run ------------------------------------------------------------------------

    def run(self):
        try:
            self.run_inner()
        finally:
            # Whatever happened, nothing this run started is left running.
            for st in self.streams:
                st.stop.set()
            for p in self.procs:
                p.stop(signal.SIGKILL, wait=5)
            if self.sim is not None and self.sim.poll() is None:
                self.sim.kill()
                self.sim.wait()

    def run_inner(self):
        a = self.a
        log(f"run {self.prefix}: {a.rate} fixes/s from {a.devices} devices for {a.secs} s; "
            f"report in {self.out}")
        for cmd in (("topics", "apply"), ("schemas", "register")):
            subprocess.run(self.locus(*cmd), env=self.env, check=True,
                           stdout=subprocess.DEVNULL)
        self.infra_pids = self.infra()
        started = [self.start("bridge") for _ in range(a.bridges)]
        started += [self.start("history") for _ in range(a.history)]
        started += [self.start("cache") for _ in range(a.cache)]
        started += [self.start("push") for _ in range(a.push)]
        self.wait_ready(started)
        time.sleep(2)  # consumers join their groups
        # --watch other: the streams watch a tenant without traffic, so the push replicas
        # read every fix and send none (the cost of fixes nobody watches).
        watched = self.tenant if a.watch == "all" else f"{self.tenant}-idle"
        token = subprocess.run(self.locus("push", "token", "--tenant", watched, "--ttl-s", "86400"),
                               env=self.env, check=True, capture_output=True, text=True).stdout.strip()
        self.token = subprocess.run(self.locus("push", "token", "--tenant", self.tenant, "--ttl-s", "86400"),
                                    env=self.env, check=True, capture_output=True, text=True).stdout.strip()
        for i, p in enumerate(x for x in self.procs if x.stage == "push"):
            st = SseStream(p.port, token, self.out / f"sse-{i}.txt")
            st.start()
            self.streams.append(st)
        time.sleep(1)

        interval_ms = max(1, round(a.devices * 1000 / a.rate))
        sim = subprocess.Popen(
            [str(self.bins / "locus-sim"), "--devices", str(a.devices), "--connections",
             str(a.connections), "--interval-ms", str(interval_ms), "--jitter-ms", "0",
             "--duration-s", str(a.secs), "--tenant", self.tenant, "--id-prefix",
             f"{self.prefix}-", "--report", str(self.out / "sim.json"), "--quiet"],
            env=self.env, stderr=open(self.out / "sim.log", "w"), preexec_fn=die_with_parent)
        self.sim, self.sim_pid = sim, sim.pid
        t0 = time.time()
        self.sample(0.0)
        events = sorted((float(at), action, stage) for at, action, stage in
                        (e.split(":") for e in a.event))
        last_print = 0
        while sim.poll() is None:
            time.sleep(1)
            t = time.time() - t0
            s = self.sample(t)
            while events and events[0][0] <= t:
                self.act(*events.pop(0), t)
            if t - last_print >= 5:
                last_print = t
                applied = {st: self.stage_applied(s, st) for st in ("history", "cache", "push")}
                log(f"{t:5.0f} s  produced {s['produced']:.0f}  history {applied['history']:.0f}  "
                    f"cache {applied['cache']:.0f}  sse {s['sse']}")
        load_end = time.time() - t0
        report = json.loads((self.out / "sim.json").read_text())
        expected = report["fixes_sent"]
        log(f"load done: {expected} fixes sent in {load_end:.0f} s; draining")
        deadline = time.time() + a.drain_timeout
        drained_at = None
        while time.time() < deadline:
            time.sleep(0.25)
            t = time.time() - t0
            s = self.sample(t)
            done = (s["produced"] >= expected
                    and all(self.stage_applied(s, st) >= expected for st in ("history", "cache"))
                    and (a.watch == "other" or all(len(st.seen) >= expected for st in self.streams)))
            if done:
                drained_at = t
                break
        end_t = time.time() - t0
        log(f"drained {'in %.1f s' % (drained_at - load_end) if drained_at else 'NOT within the timeout'}")
        for st in self.streams:
            st.stop.set()
        try:
            self.snapshot = self.snapshot_probe()
        except OSError as e:
            log(f"snapshot probe failed: {e}")
            self.snapshot = None
        for p in self.procs:
            p.stop()
        audit = self.audit(expected)
        self.write(report, load_end, drained_at, end_t, audit)

    def snapshot_probe(self):
        """A new stream of the whole tenant on the first push replica: how long until its
        opening snapshot (from the cache) has arrived, and how many positions it held."""
        push = next((p for p in self.procs if p.stage == "push" and p.alive()), None)
        if push is None:
            return None
        started = time.time()
        conn = http.client.HTTPConnection("127.0.0.1", push.port, timeout=30)
        conn.request("GET", f"/v1/stream?access_token={self.token}")
        resp = conn.getresponse()
        kind = None
        while True:
            line = resp.fp.readline()
            if not line:
                return None
            if line.startswith(b"event: "):
                kind = line[7:].strip()
            elif line.startswith(b"data: ") and kind == b"snapshot":
                snap = json.loads(line[6:])
                conn.close()
                return {"ms": round(1000 * (time.time() - started), 1),
                        "positions": len(snap["positions"]), "complete": snap["complete"]}

    def act(self, at, action, stage, t):
        live = [p for p in self.procs if p.stage == stage and p.alive()]
        if action == "add":
            p = self.start(stage)
            self.wait_ready([p])
        elif action in ("term", "kill") and live:
            live[-1].stop(signal.SIGTERM if action == "term" else signal.SIGKILL)
        else:
            raise SystemExit(f"--event {at}:{action}:{stage}: nothing to do")
        log(f"{t:5.0f} s  {action} {stage}")
        self.events_done.append((t, f"{action} {stage}"))

    def audit(self, expected):
        cmd = [str(self.bins / "locus-audit"), "--report", str(self.out / "sim.json"),
               "--topic", self.locations, "--keyspace", self.env["LOCUS_SCYLLA__KEYSPACE"],
               "--redis-prefix", self.prefix]
        for st in range(len(self.streams) if self.a.watch == "all" else 0):
            cmd += ["--sse", str(self.out / f"sse-{st}.txt")]
        log("auditing: every acknowledged fix in Kafka, Cassandra, Redis and the SSE streams")
        out = subprocess.run(cmd, env=self.env, capture_output=True, text=True)
        (self.out / "audit.log").write_text(out.stderr)
        if out.returncode != 0:
            log(f"audit failed: {out.stderr[-2000:]}")
            return {"error": out.stderr[-2000:]}
        return json.loads(out.stdout)

    # -- the report -----------------------------------------------------------------------

    def write(self, sim, load_end, drained_at, end_t, audit):
        first, last = self.samples[0], self.samples[-1]
        # A replica's last known histogram (one that exited keeps what it had measured).
        last_fresh = {}
        for x in self.samples:
            last_fresh.update(x["fresh"])
        in_kafka = audit.get("kafka", {}).get("found", last["produced"]) or 1
        cpu = {}
        for name in last["cpu"]:
            c0, c1 = first["cpu"].get(name, 0.0), last["cpu"].get(name)
            if c0 is not None and c1 is not None:
                cpu[name] = {"cpu_s": c1 - c0, "us_per_fix": 1e6 * (c1 - c0) / in_kafka,
                             "share_of_core": (c1 - c0) / max(last["t"] - first["t"], 1e-9)}
        by_stage = {}
        for st in STAGES:
            names = [p.name for p in self.procs if p.stage == st]
            by_stage[st] = {
                "replicas": len(names),
                "us_per_fix": sum(cpu[n]["us_per_fix"] for n in names if n in cpu),
                "peak_rss_mib": max((x["rss"].get(n) or 0 for x in self.samples for n in names), default=0),
            }
            if st != "bridge":
                cum = {}
                for n in names:
                    for le, v in minus(last_fresh.get(n, {}), first["fresh"].get(n, {})).items():
                        cum[le] = cum.get(le, 0) + v
                by_stage[st]["freshness_ms"] = {
                    q: (None if quantile(cum, p) is None else round(1000 * quantile(cum, p), 1))
                    for q, p in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))}
                applied = self.stage_applied(last, st)
                by_stage[st]["applied"] = applied
                by_stage[st]["reapplied"] = max(0, applied - sim["fixes_sent"]) if st != "push" else None
        lat = sorted(x for st in self.streams for x in st.latencies_ms)
        pct = lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 1) if lat else None  # noqa: E731
        result = {
            "scenario": {k: getattr(self.a, k) for k in
                         ("rate", "devices", "secs", "connections", "bridges", "history", "cache",
                          "push", "partitions", "watch", "event", "set")},
            "prefix": self.prefix,
            "sim": {k: sim[k] for k in ("fixes_sent", "messages_sent", "messages_acked", "fixes_per_s")},
            "sustained": sim["fixes_per_s"] >= 0.97 * self.a.rate and drained_at is not None
            and drained_at - load_end <= 3.0,
            "load_s": round(load_end, 1),
            "drain_s": None if drained_at is None else round(drained_at - load_end, 1),
            "publish_to_sse_ms": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99),
                                  "max": round(lat[-1], 1) if lat else None},
            "stages": by_stage,
            "processes": cpu,
            "events": self.events_done,
            "pauses_s": self.pauses(),
            "snapshot": self.snapshot,
            "audit": audit,
        }
        (self.out / "report.json").write_text(json.dumps(result, indent=2) + "\n")
        self.plots(load_end)
        md = self.markdown(result)
        (self.out / "report.md").write_text(md)
        print(md)

    def series(self, key, stage, per_s=True):
        pts, prev = [], None
        for x in self.samples:
            v = sum(val for n, val in x[key].items() if n.startswith(stage + "-"))
            if per_s:
                if prev is not None and x["t"] > prev[0]:
                    pts.append((x["t"], max(0.0, (v - prev[1]) / (x["t"] - prev[0]))))
                prev = (x["t"], v)
            else:
                pts.append((x["t"], v))
        return pts

    def pauses(self):
        """Per stage, the longest run of samples (after the first fix arrived and before the
        drain) in which the stage applied nothing while it had lag: a rebalance's pause."""
        out = {}
        for st in ("history", "cache"):
            rate, lag = self.series("applied", st), dict(self.series("lag", st, per_s=False))
            longest, start = 0.0, None
            for t, r in rate:
                if r == 0 and lag.get(t, 0) > 0:
                    start = t if start is None else start
                    longest = max(longest, t - start)
                else:
                    start = None
            out[st] = round(longest, 1)
        return out

    def plots(self, load_end):
        marks = [(t, label) for t, label in self.events_done] + [(load_end, "load ends")]
        rate = {st: self.series("applied", st) for st in ("history", "cache", "push")}
        prod, prev = [], None
        for x in self.samples:
            if prev and x["t"] > prev[0]:
                prod.append((x["t"], (x["produced"] - prev[1]) / (x["t"] - prev[0])))
            prev = (x["t"], x["produced"])
        rate = {"bridge (produced)": prod, **rate}
        (self.out / "rate.svg").write_text(svg.chart("Records per second by stage", rate, "records/s", marks=marks))
        lag = {st: self.series("lag", st, per_s=False) for st in ("history", "cache")}
        (self.out / "lag.svg").write_text(svg.chart("Consumer lag by group", lag, "records", marks=marks))
        fresh = {}
        for st in ("history", "cache", "push"):
            pts, prev = [], None
            for x in self.samples:
                cum = {}
                for n, b in x["fresh"].items():
                    if n.startswith(st + "-"):
                        for le, v in b.items():
                            cum[le] = cum.get(le, 0) + v
                if prev is not None:
                    q = quantile(minus(cum, prev), 0.99)
                    if q is not None:
                        pts.append((x["t"], q * 1000))
                prev = cum
            fresh[st] = pts
        (self.out / "freshness.svg").write_text(
            svg.chart("p99 freshness by stage (now - event time, per sample)", fresh, "ms", marks=marks))

    def markdown(self, r):
        a = r["scenario"]
        lines = [
            f"## Scenario {self.prefix}: {a['rate']} fixes/s, {a['devices']:,} devices, {a['secs']} s",
            "",
            f"Replicas: bridge {a['bridges']}, history {a['history']}, cache {a['cache']}, push {a['push']}; "
            f"{a['partitions']} partitions; events: {', '.join(a['event']) or 'none'}.",
            "",
            f"Sent (acknowledged by the MQTT broker): {r['sim']['fixes_sent']:,} at "
            f"{r['sim']['fixes_per_s']:.0f}/s; drain {r['drain_s']} s; sustained: {r['sustained']}.",
            f"Publish → SSE: p50 {r['publish_to_sse_ms']['p50']} ms, p99 {r['publish_to_sse_ms']['p99']} ms, "
            f"max {r['publish_to_sse_ms']['max']} ms. A new stream's snapshot of the tenant: "
            f"{(r['snapshot'] or {}).get('positions')} positions in {(r['snapshot'] or {}).get('ms')} ms.",
            "",
            "| stage | replicas | CPU µs/fix | freshness p50 / p99 ms | applied | re-applied | peak RSS MiB | longest pause s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for st, s in r["stages"].items():
            f = s.get("freshness_ms", {})
            lines.append(f"| {st} | {s['replicas']} | {s['us_per_fix']:.1f} | "
                         f"{f.get('p50', '-')} / {f.get('p99', '-')} | {s.get('applied', '-')} | "
                         f"{s.get('reapplied', '-')} | {s['peak_rss_mib']:.0f} | {r['pauses_s'].get(st, '-')} |")
        lines += ["", "| process | CPU µs/fix | share of a core |", "|---|---|---|"]
        for name, c in sorted(r["processes"].items(), key=lambda kv: -kv[1]["us_per_fix"]):
            lines.append(f"| {name} | {c['us_per_fix']:.1f} | {100 * c['share_of_core']:.0f} % |")
        au = r["audit"]
        if "error" not in au:
            lines += ["", "| completeness | expected | found | missing | duplicates |", "|---|---|---|---|---|"]
            for sink in ("kafka", "cassandra", "redis", "sse"):
                x = au.get(sink) or {}
                lines.append(f"| {sink} | {x.get('expected')} | {x.get('found')} | {x.get('missing')} | "
                             f"{x.get('duplicates', '-')} |")
            rb = au.get("record_bytes", {})
            lines += ["", f"One record: {rb.get('total', 0):.0f} bytes (key {rb.get('key', 0):.0f}, "
                      f"value {rb.get('value', 0):.0f}, headers {rb.get('headers', 0):.0f}); Redis holds "
                      f"{au.get('redis_bytes_per_device', 0):.0f} bytes per device."]
        else:
            lines += ["", f"audit failed: {au['error'][:300]}"]
        lines += ["", "Plots: rate.svg, lag.svg, freshness.svg.", ""]
        return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description="Run one end-to-end scenario on the local stack.")
    ap.add_argument("--rate", type=int, default=2000, help="fixes/s the simulator sends (default 2000)")
    ap.add_argument("--devices", type=int, default=10000, help="distinct devices (default 10000)")
    ap.add_argument("--secs", type=int, default=60, help="load duration, s (default 60)")
    ap.add_argument("--connections", type=int, default=16, help="MQTT connections of the simulator (default 16)")
    ap.add_argument("--bridges", type=int, default=1, help="bridge replicas (default 1)")
    ap.add_argument("--history", type=int, default=1, help="history replicas (default 1)")
    ap.add_argument("--cache", type=int, default=1, help="cache replicas (default 1)")
    ap.add_argument("--push", type=int, default=1, help="push replicas, one SSE stream each (default 1)")
    ap.add_argument("--watch", choices=["all", "other"], default="all",
                    help="what the SSE streams watch: the run's tenant (all), or a tenant "
                         "without traffic (other: push reads every fix and sends none)")
    ap.add_argument("--partitions", type=int, default=48, help="partitions of the run's topic (default 48)")
    ap.add_argument("--event", action="append", default=[],
                    help="AT:add|term|kill:STAGE, e.g. 30:add:history (repeatable)")
    ap.add_argument("--set", action="append", default=[],
                    help="LOCUS_…=value for every Locus process (repeatable)")
    ap.add_argument("--drain-timeout", type=int, default=120, help="s after the load (default 120)")
    ap.add_argument("--bin-dir", default=str(REPO / "target" / "release"),
                    help="where locus, locus-sim and locus-audit are (default target/release)")
    ap.add_argument("--out", help="report folder (default loadtest/runs/<stamp>-r<rate>)")
    Scenario(ap.parse_args()).run()


if __name__ == "__main__":
    main()
