"""The decoder against tshark on every DNS packet of the shared corpus (real, third-party pcaps).

Each corpus file is imported with ``import_pcap``, TCP is reassembled, payloads are decoded,
and for every frame tshark dissects as DNS on port 53 the timestamp, transaction id, QR, question
names and types, header rcode and the A/AAAA addresses of all sections must equal tshark's.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from analyze.decode import decode_messages, type_name
from analyze.pcap import import_pcap
from analyze.tcp import reassemble
from tests.corpus import CORPUS

FILES = sorted(p for sub in ("tunnels", "benign") for p in (CORPUS / sub).glob("*.pcap*")) \
    if CORPUS.is_dir() else []
AGG = "\x1f"  # tshark's separator between repeated values of one field

pytestmark = [
    pytest.mark.corpus,
    pytest.mark.skipif(not CORPUS.is_dir(), reason=f"corpus not found at {CORPUS}"),
    pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed"),
]


def _tshark(path: Path) -> dict[int, list[dict[str, object]]]:
    fields = ["frame.number", "dns.id", "dns.flags.response", "dns.qry.name", "dns.qry.type",
              "dns.flags.rcode", "dns.a", "dns.aaaa", "frame.time_epoch"]
    cmd = ["tshark", "-n", "-r", str(path), "-Y", "dns && (udp.port == 53 || tcp.port == 53)",
           "-T", "fields", "-E", "separator=/t", "-E", f"aggregator={AGG}", "-E", "quote=n"]
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, check=True, timeout=120).stdout.decode(
        "utf-8", errors="replace")
    frames: dict[int, list[dict[str, object]]] = {}
    for line in out.splitlines():
        cols = line.split("\t")
        cols += [""] * (len(fields) - len(cols))
        split = [c.split(AGG) if c else [] for c in cols]
        ids = split[1]
        # A frame may carry several DNS messages (TCP): per-message fields come in order.
        msgs = []
        for i, dns_id in enumerate(ids):
            msgs.append({
                "dns_id": int(dns_id, 16),
                "qr": split[2][i] in ("1", "True"),
                "rcode": int(split[5][i]) if i < len(split[5]) and split[5][i] else None,
            })
        # Names, types and addresses are not per message when a frame has several: compare
        # them as multisets over the frame.
        sec, _, frac = cols[8].partition(".")
        frames[int(cols[0])] = [{"msgs": msgs, "qnames": [_norm(n) for n in split[3]],
                                 "qtypes": [type_name(int(t)) for t in split[4]],
                                 "ips": sorted(split[6] + split[7]),
                                 "ts": int(sec) * 1_000_000_000 + int((frac + "0" * 9)[:9])}]
    return frames


def _norm(name: str) -> str:
    """tshark prints names as the packet spells them; ours are lower-case, root is '.'."""
    if name in ("<Root>", "<root>", ""):
        return "."
    return name.lower().rstrip(".")


def _as_tshark_prints(name: str) -> str:
    """Our escaped name as tshark 4 prints it: bytes >= 128 become U+FFFD, others plain."""
    return re.sub(r"\\(\d{3})",
                  lambda m: "\ufffd" if int(m.group(1)) >= 128 else chr(int(m.group(1))), name)


def _ours(path: Path, tmp_path: Path) -> dict[int, list[dict[str, object]]]:
    out = tmp_path / path.name
    import_pcap(path, out)
    messages = reassemble(pq.read_table(out / "messages-000001.parquet"))
    decoded = decode_messages(messages["payload"].tolist())
    stamps = [t.value for t in messages["ts"]]
    by_frame: dict[int, list[int]] = defaultdict(list)
    for i, seq in enumerate(messages["seq"].tolist()):
        by_frame[int(seq)].append(i)
    frames: dict[int, list[dict[str, object]]] = {}
    for seq, rows in by_frame.items():
        msgs, qnames, qtypes, ips = [], [], [], []
        for i in rows:
            r = decoded.iloc[i]
            if r["dns_id"] is None or r["dns_id"] is __import__("pandas").NA:
                continue
            msgs.append({"dns_id": int(r["dns_id"]), "qr": bool(r["qr"]),
                         "rcode": None if r["rcode"] is None else int(r["rcode"]) & 0xF})
            qnames += [_as_tshark_prints(q[0]) for q in r["questions"]]
            qtypes += [q[1] for q in r["questions"]]
            for section in ("answers", "authority", "additional"):
                ips += [rec[3] for rec in r[section] if rec[1] in ("A", "AAAA")]
        frames[seq] = [{"msgs": msgs, "qnames": qnames, "qtypes": qtypes, "ips": sorted(ips),
                        "ts": stamps[rows[0]]}]
    return frames


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_decoder_matches_tshark(path: Path, tmp_path: Path) -> None:
    theirs = _tshark(path)
    ours = _ours(path, tmp_path)
    assert theirs, f"tshark found no DNS in {path.name}"
    compared = 0
    for frame, [t] in sorted(theirs.items()):
        assert frame in ours, f"{path.name} frame {frame}: tshark decodes DNS, we have no row"
        o = ours[frame][0]
        for tm, om in zip(t["msgs"], o["msgs"], strict=True):  # type: ignore[call-overload]
            assert (om["dns_id"], om["qr"]) == (tm["dns_id"], tm["qr"]), f"frame {frame}"
            if tm["rcode"] is not None:
                assert om["rcode"] == tm["rcode"], f"{path.name} frame {frame}: rcode"
        assert sorted(o["qnames"]) == sorted(t["qnames"]), f"{path.name} frame {frame}: qname"
        assert sorted(o["qtypes"]) == sorted(t["qtypes"]), f"{path.name} frame {frame}: qtype"
        assert o["ips"] == t["ips"], f"{path.name} frame {frame}: A/AAAA"
        assert o["ts"] == t["ts"], f"{path.name} frame {frame}: timestamp"
        compared += 1
    # Every DNS row we produced is a frame tshark also decodes as DNS.
    extra = sorted(set(ours) - set(theirs))
    assert not extra, f"{path.name}: frames {extra[:10]} decoded by us but not by tshark"
    assert compared > 0
    print(f"{path.name}: {compared} frames compared")
