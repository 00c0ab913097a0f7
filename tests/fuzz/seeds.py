"""Write the seed inputs of the regression corpus (``python -m tests.fuzz.seeds``).

Seeds are real messages and the hostile shapes of tests/fuzz/wire.py, in the input format of
each target. Crashers found by the fuzzers are kept beside them as ``crash-*`` files (they are
not written here: each is the exact input that broke the code once).
"""

from __future__ import annotations

import struct
from pathlib import Path

from tests.fuzz import wire
from tests.fuzz.targets import tcp_input

CORPUS = Path(__file__).parent / "corpus"


def _framed(m: bytes) -> bytes:
    return struct.pack("!H", len(m)) + m


def decode_seeds() -> dict[str, bytes]:
    seeds = {f"seed-real-{i}": m for i, m in enumerate(wire.real_messages())}
    seeds |= {f"seed-{k.replace('_', '-')}": v for k, v in wire.hostile_messages().items()}
    seeds["seed-empty"] = b""
    return seeds


def tcp_seeds() -> dict[str, bytes]:
    real = wire.real_messages()
    two = _framed(real[0]) + _framed(real[2])
    return {
        # two messages in one stream cut at every awkward place, a second stream, UDP between
        "seed-split": tcp_input([(0, two[:1]), (0, two[1:20]), (1, _framed(real[1])),
                                 (0, two[20:]), (0, b"\x10")], udp=(2,)),
        # a chunk cut by the snaplen inside a message, then one whose loss takes a prefix
        "seed-cut": tcp_input([(0, two[:30]), (0, two[30:60]), (0, two[60:])], cut=(0,)),
        "seed-out-of-sync": tcp_input([(2, two[:60]), (2, two[60:]), (2, two)], cut=(0, 1)),
        # a prefix announcing 65535 bytes and then little, and hostile messages framed
        "seed-huge-prefix": tcp_input([(3, b"\xff\xff" + real[0])]),
        "seed-hostile": tcp_input([(0, b"".join(_framed(m) for m in
                                                wire.hostile_messages().values()))]),
    }


def pcap_seeds() -> dict[str, bytes]:
    real = wire.real_messages()
    udp_q = wire.ether(wire.ipv4(17, wire.udp(40000, 53, real[0])))
    udp_r = wire.ether(wire.ipv4(17, wire.udp(53, 40000, real[2]), "10.0.0.53", "10.0.0.1"))
    udp6 = wire.ether(wire.ipv6(17, wire.udp(40001, 53, real[6])))
    iodine = wire.ether(wire.ipv4(17, wire.udp(40002, 53, wire.iodine_raw(120))))
    stream = wire.tcp_stream([real[3], wire.edns_garbage()], mss=40)
    return {
        "seed-udp.pcap": wire.pcap_file([udp_q, udp_r, udp6]),
        "seed-udp.pcapng": wire.pcapng_file([udp_q, udp_r]),
        "seed-tcp.pcap": wire.pcap_file(stream, big=True, nanos=True),
        "seed-iodine-raw.pcap": wire.pcap_file([iodine, udp_q]),
        "seed-raw-ip.pcap": wire.pcap_file([udp_q[14:]], linktype=101),
        "seed-cut.pcap": wire.pcap_file([udp_q, udp_r])[:-7],
    }


def main() -> None:
    for target, seeds in (("decode", decode_seeds()), ("tcp", tcp_seeds()),
                          ("pcap", pcap_seeds())):
        d = CORPUS / target
        d.mkdir(parents=True, exist_ok=True)
        for name, data in seeds.items():
            (d / name).write_bytes(data)


if __name__ == "__main__":
    main()
