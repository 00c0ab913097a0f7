"""The recorder's spool on a saturated node (live: root, BCC, the lab's dnsperf).

With the defaults (--priority auto, the spool), the recorder stays at nice 0 and keeps draining
the ring into spool segments (at nice 19 a saturated node would starve it); the expensive part,
turning segments into Parquet, runs in a converter process at nice 19, and while the workload
leaves the node no idle CPU the converter is stopped altogether (and closed segments wait to be
hashed). When the load ends the conversion catches up; a finished capture holds no spool.
Every message is a row once, in seq order, or a counted loss.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.test_record_priority import _Hogs, _nices, _recording, _wait_for

pytestmark = pytest.mark.live


def _manifest(out: Path) -> dict:
    try:
        return json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}


def test_a_saturated_node_defers_the_conversion_and_keeps_draining(lab, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.lab.require import require_root_bcc

    require_root_bcc()
    from tests.test_writer import check_capture

    out = tmp_path / "cap"
    results = []
    spooled_while_saturated: list[str] = []
    # small segments, so that several close (and are listed) during the flood
    # _Hogs: a busy loop on every CPU at nice 0: no idle CPU left
    with _recording(out, "--duration", "120s", "--max-size", "2MB") as (proc, lines):
        with _Hogs():
            ns = lab.client_ns()
            flood = threading.Thread(target=lambda: results.append(
                lab.dnsperf(ns, lab.server_addr, duration=5.0)))
            flood.start()
            time.sleep(3.0)
            # the drain stays at nice 0; the converter (nice 19) is stopped
            assert _nices(proc.pid) == {0}, _nices(proc.pid)
            children = _children(proc.pid)
            assert children and all(_nices(c) == {19} for c in children), children
            assert all(_state(c) == "T" for c in children), [_state(c) for c in children]
            flood.join(timeout=60)
            spooled_while_saturated = sorted(p.name for p in out.glob("spool-*.spool"))
        # the hogs are gone: the conversion catches up while the capture still runs
        assert _wait_for(lambda: len(list(out.glob("spool-*.spool"))) <= 1
                         and not any(f["kind"] == "spool"
                                     for f in _manifest(out).get("files", [])), 60), \
            "".join(lines)
    assert proc.returncode == 0, "".join(lines)
    assert results and results[0].completed > 5000, results
    assert len(spooled_while_saturated) >= 2, spooled_while_saturated  # segments waited
    assert any("Parquet conversion waits" in ln for ln in lines), "".join(lines)
    assert any("converting" in ln and "spooled messages" in ln for ln in lines), "".join(lines)
    m = check_capture(out)
    assert m["status"] == "complete" and m["spool_open"] is None
    assert not list(out.glob("spool-*")), "a finished capture keeps no spool"
    assert [e["level"] for e in m["priority_log"]][:2] == ["low", "normal"], m["priority_log"]
    seq = pq.read_table(sorted(out.glob("messages-*.parquet")),
                        columns=["seq"]).column("seq").to_numpy()
    seq.sort()
    assert len(seq) == m["counts"]["messages"] and (seq == range(len(seq))).all()
    # every query is 4 messages (dnsperf's send and receive, the server's), each a row or
    # counted: nothing vanished between the ring, the spool and the Parquet files
    kept = m["counts"]["messages"]
    assert kept + m["lost"]["ringbuf_full"] >= 4 * results[0].completed


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def test_what_is_not_converted_in_time_stays_spooled_and_readable(tmp_path: Path) -> None:
    """--finish-within 0: the capture ends at once; the last segment stays spooled, listed
    with its hash, and the analyzer reads every message (Parquet files and segments)."""
    from capture.recorder import RecordOptions
    from tests.lab.require import require_root_bcc
    from tests.test_record_live import Recording, dns_traffic
    from tests.test_writer import check_capture

    require_root_bcc()
    out = tmp_path / "cap"
    with Recording(RecordOptions(output=out, finish_seconds=0.0, pods_root=None)) as rec:
        with dns_traffic(count=2000, seconds=20, tag="left"):
            pass
        summary = rec.stop()
    m = check_capture(out)  # every listed file, spool segments too, matches its hash
    assert m["status"] == "complete" and m["spool_open"] is None
    spooled = [f for f in m["files"] if f["kind"] == "spool"]
    assert spooled and summary.spooled_left == sum(f["rows"] for f in spooled)
    assert any("left spooled" in ln for ln in summary.lines())
    parquet = m["counts"]["messages"]
    assert summary.counts["messages"] == parquet + summary.spooled_left >= 4 * 2000
    import analyze

    cap = analyze.load(out, work_dir=tmp_path / "work")
    assert cap.sql("SELECT count(*) AS n FROM messages")["n"][0] == parquet + summary.spooled_left
    assert not cap.warnings or not any("no hash" in w for w in cap.warnings), cap.warnings


def test_sigterm_under_load_ends_within_the_finish_time(lab, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """SIGTERM while a flood runs on a saturated node (Kubernetes stopping the pod): the
    recorder is gone within --finish-within plus the time to stop, the capture complete, and
    what it had no time to convert is spooled, listed and readable."""
    import signal

    from tests.lab.require import require_root_bcc
    from tests.test_writer import check_capture

    require_root_bcc()
    out = tmp_path / "cap"
    results = []
    with _recording(out, "--duration", "120s", "--finish-within", "3s") as (proc, lines), \
            _Hogs():
        ns = lab.client_ns()
        flood = threading.Thread(target=lambda: results.append(
            lab.dnsperf(ns, lab.server_addr, duration=8.0)))
        flood.start()
        time.sleep(5.0)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        took = time.monotonic() - t0
        flood.join(timeout=60)
    assert proc.returncode == 0, "".join(lines)
    assert took < 3.0 + 10.0, (took, "".join(lines))
    m = check_capture(out)
    assert m["status"] == "complete" and m["spool_open"] is None
    import analyze

    cap = analyze.load(out, work_dir=tmp_path / "work")
    kept = int(cap.sql("SELECT count(*) AS n FROM messages")["n"][0])
    spooled = sum(f["rows"] for f in m["files"] if f["kind"] == "spool")
    assert kept == m["counts"]["messages"] + spooled > 0
