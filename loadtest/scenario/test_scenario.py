"""The scenario runner on a tiny scenario, against the local stack (`dev/stack up`), so that
the runner cannot rot: every fix must be found in every sink and the report must be whole."""

import json
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_a_tiny_scenario_finds_every_fix_everywhere_and_reports_it(tmp_path):
    out = tmp_path / "run"
    subprocess.run(
        [sys.executable, str(REPO / "loadtest/scenario/run.py"), "--rate", "100", "--devices",
         "50", "--secs", "6", "--connections", "2", "--partitions", "4", "--bin-dir",
         str(REPO / "target/debug"), "--out", str(out), "--drain-timeout", "60"],
        check=True, timeout=300)
    r = json.loads((out / "report.json").read_text())
    sent = r["sim"]["fixes_sent"]
    assert sent >= 400, r["sim"]
    for sink in ("kafka", "cassandra", "sse"):
        a = r["audit"][sink]
        assert (a["expected"], a["found"], a["missing"]) == (sent, sent, 0), (sink, a)
    assert r["audit"]["kafka"]["duplicates"] == 0
    assert r["audit"]["redis"]["missing"] == 0 and r["audit"]["redis"]["found"] == 50
    assert r["drain_s"] is not None
    for stage in ("history", "cache"):
        assert r["stages"][stage]["applied"] >= sent
        assert r["stages"][stage]["freshness_ms"]["p99"] is not None
    assert r["stages"]["bridge"]["us_per_fix"] > 0
    assert r["publish_to_sse_ms"]["p99"] is not None
    for plot in ("rate.svg", "lag.svg", "freshness.svg"):
        assert (out / plot).read_text().startswith("<svg"), plot
    assert "| completeness |" in (out / "report.md").read_text()
