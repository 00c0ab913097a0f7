"""DNS-over-TCP reassembly on chunks cut from real messages, and the corpus TCP captures."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dnslib import RR, DNSRecord

from analyze.decode import decode_messages
from analyze.pcap import import_pcap
from analyze.tcp import E_INCOMPLETE, E_OUT_OF_SYNC, E_TRUNCATED_CHUNK, reassemble
from capture.schema import MESSAGES_SCHEMA
from tests.corpus import CORPUS

T0 = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)


def _msg(name: str, answer: str | None = None) -> bytes:
    q = DNSRecord.question(name, "A")
    if answer is None:
        return bytes(q.pack())
    r = q.reply()
    r.add_answer(*RR.fromZone(f"{name}. 60 IN A {answer}"))
    return bytes(r.pack())


def _framed(m: bytes) -> bytes:
    return len(m).to_bytes(2, "big") + m


M1, M2, M3 = _msg("one.example.com"), _msg("two.example.com", "192.0.2.2"), _msg("three.example")


def _rows(chunks: list[bytes | tuple[bytes, int]], *, port: int = 40000,
          start_seq: int = 1, **extra: Any) -> list[dict[str, Any]]:
    rows = []
    for i, c in enumerate(chunks):
        data, orig = (c, len(c)) if isinstance(c, bytes) else c
        rows.append({"ts": T0 + dt.timedelta(milliseconds=i), "seq": start_seq + i,
                     "msg_index": 0, "protocol": "tcp", "family": "inet", "syscall": "read",
                     "tgid": 10, "fd": 5, "sock_id": port, "direction": "recv",
                     "src_addr": "10.0.0.53", "src_port": 53, "dst_addr": "10.0.0.1",
                     "dst_port": port, "payload": data, "orig_len": orig,
                     "truncated": len(data) < orig, **extra})
    return rows


def _table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=MESSAGES_SCHEMA)


def test_one_message_across_three_chunks() -> None:
    s = _framed(M1)
    out = reassemble(_table(_rows([s[:5], s[5:20], s[20:]])))
    assert out["payload"].tolist() == [M1]
    assert out["seq"].tolist() == [3]  # the chunk that completed it
    assert out["orig_len"].tolist() == [len(M1)]
    assert out["truncated"].tolist() == [False]
    assert out["stream_error"].isna().all()
    assert decode_messages(out["payload"].tolist())["qname"].tolist() == ["one.example.com"]


def test_two_messages_in_one_chunk_and_split_prefix() -> None:
    s = _framed(M1) + _framed(M2) + _framed(M3)
    cut = len(_framed(M1)) + len(_framed(M2)) + 1  # one byte of M3's prefix in chunk 1
    out = reassemble(_table(_rows([s[:cut], s[cut:]])))
    assert out["payload"].tolist() == [M1, M2, M3]
    assert out["seq"].tolist() == [1, 1, 2]
    decoded = decode_messages(out["payload"].tolist())
    assert decoded["qname"].tolist() == ["one.example.com", "two.example.com", "three.example"]
    assert decoded["answer_ips"].tolist()[1] == ["192.0.2.2"]


def test_streams_interleaved_and_out_of_row_order_with_udp_passthrough() -> None:
    a = _framed(M1) + _framed(M2)
    b = _framed(M3)
    rows = _rows([a[:3], a[3:30], a[30:]], port=40001) + _rows([b[:10], b[10:]], port=40002,
                                                              start_seq=10)
    udp = dict(rows[0], protocol="udp", payload=M2, orig_len=len(M2), seq=100)
    rows.append(udp)
    rng = random.Random(7)
    rng.shuffle(rows)  # rows arrive in any order; seq orders each stream
    out = reassemble(_table(rows))
    assert sorted(out["payload"].tolist()) == sorted([M1, M2, M3, M2])
    tcp = out[out["protocol"] == "tcp"]
    by_port = {p: g["payload"].tolist() for p, g in tcp.groupby("dst_port")}
    assert by_port == {40001: [M1, M2], 40002: [M3]}
    assert (out[out["protocol"] == "udp"]["payload"] == M2).all()


def test_dataframe_input_matches_table_input() -> None:
    s = _framed(M1) + _framed(M2)
    table = _table(_rows([s[:7], s[7:]]))
    a = reassemble(table)
    b = reassemble(table.to_pandas())
    assert a["payload"].tolist() == b["payload"].tolist() == [M1, M2]
    assert a["seq"].tolist() == [int(x) for x in b["seq"].tolist()]


def test_leftover_bytes_become_an_error_row() -> None:
    s = _framed(M1) + _framed(M2)[:9]
    out = reassemble(_table(_rows([s])))
    assert out["payload"].tolist()[0] == M1
    assert out["stream_error"].tolist()[1] == E_INCOMPLETE
    assert out["truncated"].tolist()[1] is True
    assert out["orig_len"].tolist()[1] == len(M2)
    assert decode_messages(out["payload"].tolist())["error"].notna().tolist() == [False, True]


def test_truncated_chunk_inside_a_message_keeps_later_framing() -> None:
    s1 = _framed(M1)
    # Chunk 1 holds M1's prefix and 10 bytes, but moved the whole message (snaplen cut);
    # chunk 2 holds M2 whole: it must come out clean.
    out = reassemble(_table(_rows([(s1[:12], len(s1)), _framed(M2)])))
    assert out["stream_error"].tolist()[0] == E_TRUNCATED_CHUNK
    assert out["payload"].tolist()[0] == M1[:10]
    assert out["orig_len"].tolist()[0] == len(M1)
    assert out["payload"].tolist()[1] == M2
    assert out["stream_error"].isna().tolist()[1]


def test_truncated_chunk_that_loses_a_prefix_puts_the_stream_out_of_sync() -> None:
    s = _framed(M1) + _framed(M2)
    out = reassemble(_table(_rows([(s[:12], len(s)), _framed(M3)])))
    errors = out["stream_error"].tolist()
    assert errors[0] == E_TRUNCATED_CHUNK
    assert errors[-1] == E_OUT_OF_SYNC
    assert out["payload"].tolist()[-1] == _framed(M3)  # raw chunk kept, not dropped


def test_no_tcp_rows_pass_through() -> None:
    rows = [dict(r, protocol="udp") for r in _rows([M1, M2])]
    out = reassemble(_table(rows))
    assert out["payload"].tolist() == [M1, M2]
    assert out["stream_error"].isna().all()


@pytest.mark.corpus
@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"corpus not found at {CORPUS}")
@pytest.mark.parametrize("name,expected", [("dns_tcp.pcapng", 2), ("dns_axfr.pcapng", 2)])
def test_corpus_tcp_end_to_end(name: str, expected: int, tmp_path: Path) -> None:
    import_pcap(CORPUS / "benign" / name, tmp_path / "cap")
    table = pq.read_table(tmp_path / "cap" / "messages-000001.parquet")
    out = reassemble(table)
    tcp = out[out["protocol"] == "tcp"]
    assert len(tcp) == expected
    assert tcp["stream_error"].isna().all()
    decoded = decode_messages(tcp["payload"].tolist())
    assert decoded["qr"].tolist() == [False, True]
    assert decoded["dns_id"].nunique() == 1
    response = decoded.iloc[1]
    assert response["ancount"] > 1 and len(response["answers"]) == response["ancount"]
    # The response spans segments: more chunks than messages, and it decodes whole.
    chunks = [p for p in table.column("protocol").to_pylist() if p == "tcp"]
    assert len(chunks) > expected
    assert decoded["error"].isna().iloc[1]


def test_skip_then_another_cut_chunk_keeps_counting() -> None:
    # M1 cut in chunk 1 (rest skipped); chunk 2 starts with the rest of M1, then M2 whose
    # chunk is cut too: M2 comes out truncated, then M3 whole.
    s1, s2 = _framed(M1), _framed(M2)
    chunk1 = (s1[:6], len(s1) - 4)  # 4 bytes of M1 are in chunk 2
    rest = s1[len(s1) - 4 :] + s2
    chunk2 = (rest[:10], len(rest))  # cut after 6 bytes of M2's frame
    out = reassemble(_table(_rows([chunk1, chunk2, _framed(M3)])))
    assert out["stream_error"].tolist()[:2] == [E_TRUNCATED_CHUNK, E_TRUNCATED_CHUNK]
    assert out["payload"].tolist()[1] == M2[:4]
    assert out["payload"].tolist()[2] == M3
    assert pd.isna(out["stream_error"].tolist()[2])
