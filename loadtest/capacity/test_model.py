"""The capacity model: docs/capacity.md matches its inputs, and its answers move the right way."""

import pathlib
import subprocess
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import model  # noqa: E402


def test_the_document_is_generated_from_the_inputs():
    script = pathlib.Path(model.__file__)
    r = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_more_devices_or_faster_fixes_never_need_fewer_parts():
    cfg = model.load()
    keys = [k for _, k in model.ROWS]
    for interval in (30, 5):
        small, big = model.size(cfg, 500_000, interval), model.size(cfg, 5_000_000, interval)
        for k in keys:
            assert big[k] >= small[k], k
    slow, fast = model.size(cfg, 1_000_000, 30), model.size(cfg, 1_000_000, 5)
    assert fast["fixes_per_s"] == 6 * slow["fixes_per_s"]
    assert fast["kafka_partitions"] >= slow["kafka_partitions"]


def test_every_input_says_where_it_comes_from():
    cfg = model.load()
    for group in ("unit", "public"):
        for name, i in cfg[group].items():
            assert i["source"] and i["date"] and i["what"], name
