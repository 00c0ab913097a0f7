"""Field offsets of kernel structs read from the running kernel's BTF.

BCC compiles against whatever kernel headers are installed; when they are not the running
kernel's (a Debian 6.1 header set on a 6.18 kernel, say) ``offsetof(struct task_struct, ...)``
is wrong and ``bpf_probe_read_kernel`` silently returns garbage. The kernel describes its own
layout in ``/sys/kernel/btf/vmlinux``; this module reads the few offsets the probe needs from
there and the probe passes them to the C code as ``-D`` constants (manual CO-RE).

Only the parts of the BTF format needed to walk struct members are decoded.
"""

from __future__ import annotations

import struct
from pathlib import Path

VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")

_MAGIC = 0xEB9F
# kind -> size of the data that follows the 12-byte btf_type, as (fixed, per vlen item)
_EXTRA: dict[int, tuple[int, int]] = {
    1: (4, 0),  # INT
    2: (0, 0),  # PTR
    3: (12, 0),  # ARRAY
    4: (0, 12),  # STRUCT
    5: (0, 12),  # UNION
    6: (0, 8),  # ENUM
    7: (0, 0),  # FWD
    8: (0, 0),  # TYPEDEF
    9: (0, 0),  # VOLATILE
    10: (0, 0),  # CONST
    11: (0, 0),  # RESTRICT
    12: (0, 0),  # FUNC
    13: (0, 8),  # FUNC_PROTO
    14: (4, 0),  # VAR
    15: (0, 12),  # DATASEC
    16: (0, 0),  # FLOAT
    17: (4, 0),  # DECL_TAG
    18: (0, 0),  # TYPE_TAG
    19: (0, 12),  # ENUM64
}
_STRUCT, _UNION, _TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _TYPE_TAG = 4, 5, 8, 9, 10, 11, 18


class BtfError(Exception):
    """The kernel BTF could not be read or lacks a struct member the probe needs."""


class Btf:
    """A parsed BTF blob: struct/union members by type id, and struct ids by name."""

    def __init__(self, blob: bytes) -> None:
        if len(blob) < 24:
            raise BtfError("BTF blob too short")
        magic, _ver, _flags, hdr_len = struct.unpack_from("<HBBI", blob, 0)
        if magic != _MAGIC:
            raise BtfError("not a little-endian BTF blob")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", blob, 8)
        types = blob[hdr_len + type_off : hdr_len + type_off + type_len]
        self._strings = blob[hdr_len + str_off : hdr_len + str_off + str_len]
        # id -> (kind, name_off, size_or_type, kind_flag, members)
        self._types: list[tuple[int, int, int, bool, list[tuple[int, int, int]]]] = [
            (0, 0, 0, False, [])
        ]
        self._by_name: dict[tuple[int, str], int] = {}
        pos = 0
        while pos + 12 <= len(types):
            name_off, info, size_type = struct.unpack_from("<III", types, pos)
            pos += 12
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            kflag = bool(info >> 31)
            if kind not in _EXTRA:
                raise BtfError(f"unknown BTF kind {kind}")
            fixed, per = _EXTRA[kind]
            members: list[tuple[int, int, int]] = []
            if kind in (_STRUCT, _UNION):
                for i in range(vlen):
                    members.append(struct.unpack_from("<III", types, pos + 12 * i))
            pos += fixed + per * vlen
            self._types.append((kind, name_off, size_type, kflag, members))
            if name_off and kind in (_STRUCT, _UNION):
                self._by_name.setdefault((kind, self._name(name_off)), len(self._types) - 1)

    def _name(self, off: int) -> str:
        end = self._strings.index(b"\0", off)
        return self._strings[off:end].decode()

    def _strip(self, type_id: int) -> int:
        for _ in range(32):
            kind, _n, target, _k, _m = self._types[type_id]
            if kind not in (_TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _TYPE_TAG):
                return type_id
            type_id = target
        raise BtfError("typedef chain too long")

    def _find_member(self, type_id: int, name: str) -> tuple[int, int] | None:
        """(bit offset, member type id) of a member, looking through anonymous members."""
        kind, _n, _size, kflag, members = self._types[self._strip(type_id)]
        if kind not in (_STRUCT, _UNION):
            return None
        for name_off, mtype, moff in members:
            bits = moff & 0xFFFFFF if kflag else moff
            if name_off and self._name(name_off) == name:
                return bits, mtype
            if not name_off:
                inner = self._find_member(mtype, name)
                if inner is not None:
                    return bits + inner[0], inner[1]
        return None

    def offset(self, struct_name: str, path: str) -> int:
        """Byte offset of ``path`` (``a.b.c``) inside ``struct struct_name``."""
        type_id = self._by_name.get((_STRUCT, struct_name))
        if type_id is None:
            raise BtfError(f"struct {struct_name} not in BTF")
        total = 0
        for part in path.split("."):
            found = self._find_member(type_id, part)
            if found is None:
                raise BtfError(f"struct {struct_name} has no member {path}")
            bits, type_id = found
            if bits % 8:
                raise BtfError(f"{struct_name}.{path} is a bitfield")
            total += bits // 8
        return total


#: Offsets the probe needs: C macro name -> (struct, member path).
PROBE_OFFSETS: dict[str, tuple[str, str]] = {
    "OFF_TASK_NSPROXY": ("task_struct", "nsproxy"),
    "OFF_TASK_FLAGS": ("task_struct", "flags"),
    "OFF_TASK_REAL_PARENT": ("task_struct", "real_parent"),
    "OFF_TASK_TGID": ("task_struct", "tgid"),
    "OFF_TASK_FILES": ("task_struct", "files"),
    "OFF_TASK_GROUP_LEADER": ("task_struct", "group_leader"),
    "OFF_TASK_COMM": ("task_struct", "comm"),
    "OFF_FILES_FDT": ("files_struct", "fdt"),
    "OFF_FDT_MAX_FDS": ("fdtable", "max_fds"),
    "OFF_FDT_FD": ("fdtable", "fd"),
    "OFF_FILE_F_INODE": ("file", "f_inode"),
    "OFF_FILE_PRIVATE_DATA": ("file", "private_data"),
    "OFF_INODE_I_MODE": ("inode", "i_mode"),
    "OFF_SOCKET_SK": ("socket", "sk"),
    "OFF_SK_PROTOCOL": ("sock", "sk_protocol"),
    "OFF_NSPROXY_NET_NS": ("nsproxy", "net_ns"),
    "OFF_NET_NS_INUM": ("net", "ns.inum"),
    "OFF_SKC_DADDR": ("sock_common", "skc_daddr"),
    "OFF_SKC_RCV_SADDR": ("sock_common", "skc_rcv_saddr"),
    "OFF_SKC_DPORT": ("sock_common", "skc_dport"),
    "OFF_SKC_NUM": ("sock_common", "skc_num"),
    "OFF_SKC_FAMILY": ("sock_common", "skc_family"),
    "OFF_SKC_V6_DADDR": ("sock_common", "skc_v6_daddr"),
    "OFF_SKC_V6_RCV_SADDR": ("sock_common", "skc_v6_rcv_saddr"),
}


def probe_offsets(path: Path = VMLINUX_BTF) -> dict[str, int]:
    """The PROBE_OFFSETS of the running kernel that its BTF describes (a member BTF lacks
    or holds as a bitfield is left out: the C code then uses the headers' offsetof).
    Raises BtfError when the BTF itself is unusable."""
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise BtfError(f"{path}: {exc.strerror}") from None
    btf = Btf(blob)
    found: dict[str, int] = {}
    for macro, (struct_name, member) in PROBE_OFFSETS.items():
        try:
            found[macro] = btf.offset(struct_name, member)
        except BtfError:
            continue
    return found
