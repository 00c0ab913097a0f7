// dnstrail: record DNS messages moved by any syscall, plus connect() and exec events.
//
// Loaded by capture/probe.py with BCC. Constants arrive as -D cflags (see probe.py):
//   MAX_PAYLOAD      snaplen in bytes (payload bytes copied per message)
//   RINGBUF_PAGES    size of the ring buffer in pages (power of two)
//   MAX_MMSG         messages read from one sendmmsg/recvmmsg vector
//   MAX_IOV          iovecs read from one msghdr / readv / writev
//   FILTER_PIDS, FILTER_COMMS, FILTER_CGROUPS, FILTER_PORTS   1 when that filter is in force
//   TRACE_CONNECTS, TRACE_EXECS               1 to emit those events
//   SOCK_SALT        64-bit salt mixed into sock_id (kernel pointers are not exported raw)
//   OFF_*            struct member offsets of the *running* kernel, read from its BTF by
//                    capture/_btf.py (installed headers may be for another kernel version)
//
// Design (docs/bpf.md has the long form):
//  * Two raw tracepoints carry the hot path; no per-syscall tracepoint fires for DNS I/O.
//  * sock_send_length / sock_recv_length (raw, Linux >= 6.3) fire inside the syscall for every
//    message that goes through a socket. For a socket whose local or remote port is in the
//    port set (or an unconnected UDP socket, whose messages carry their own address), they
//    arm the thread's slot (task local storage) with the socket identity, protocol, family
//    and both endpoints. Every other socket message on the node costs two reads and returns.
//  * sys_exit (raw) returns at once unless the thread's slot is armed. Then it reads the
//    syscall number and arguments from the saved user registers, reads the user buffers with
//    the returned length, decides DNS or not (the message's own address may decide), and emits
//    one ring buffer record per message (per element of a sendmmsg/recvmmsg vector). Socket
//    I/O in any other syscall (sendfile, splice, io_uring, 32-bit socketcall), or in a thread
//    that makes no syscalls (io_uring worker, kernel thread), is counted as
//    untracked_socket_io, one per message.
//  * Kernels without the sock tracepoints (SOCK_TP=0): sys_exit itself filters by syscall
//    number, gates read/write/readv/writev on (tgid, fd) in `fd_state` (sockets connect()ed
//    to a DNS port, accepted sockets), and finds the socket by walking the task's fd table.
//  * Everything that could not be recorded is counted in `lost` by cause.

#include <uapi/linux/ptrace.h>
#include <uapi/linux/in.h>
#include <uapi/linux/in6.h>
#include <linux/socket.h>
#include <linux/uio.h>
#include <linux/sched.h>
#include <linux/nsproxy.h>
#include <linux/fdtable.h>
#include <linux/fs.h>
#include <linux/net.h>
#include <net/sock.h>
#include <net/net_namespace.h>
#include <asm/unistd.h>

#ifndef MAX_PAYLOAD
#define MAX_PAYLOAD 1232
#endif
#ifndef OFF_MASK
#define OFF_MASK 2047  // (power of two > MAX_PAYLOAD) - 1: masks offsets/lengths for the verifier
#endif
#ifndef SLOT_SMALL
// Message records have one of two payload slot sizes (SLOT_SMALL for payloads that fit,
// SLOT_BIG otherwise) so that runs of equal-size records let user space find record
// boundaries with vectorized reads instead of a per-record walk.
#define SLOT_SMALL 512
#endif
#ifndef SLOT_BIG
#define SLOT_BIG 1232
#endif
#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 16384
#endif
#ifndef RESCUE_PAGES
#define RESCUE_PAGES 256  // the rescue ring (see RINGBUF_RETRY), pages
#endif
#ifndef MAX_MMSG
#define MAX_MMSG 16
#endif
#ifndef MAX_IOV
#define MAX_IOV 4
#endif
#ifndef FILTER_PIDS
#define FILTER_PIDS 0
#endif
#ifndef FILTER_COMMS
#define FILTER_COMMS 0
#endif
#ifndef FILTER_CGROUPS
#define FILTER_CGROUPS 0  // 1: in force from attach (set_cgroup_ids can also turn it on later)
#endif
#ifndef FILTER_PORTS
#define FILTER_PORTS 1
#endif
#ifndef TRACE_CONNECTS
#define TRACE_CONNECTS 1
#endif
#ifndef TRACE_EXECS
#define TRACE_EXECS 1
#endif
#ifndef SOCK_SALT
#define SOCK_SALT 0x5bd1e995ULL
#endif
// Offsets: from the running kernel's BTF (-D), else from the installed headers.
#ifndef OFF_TASK_NSPROXY
#define OFF_TASK_NSPROXY offsetof(struct task_struct, nsproxy)
#endif
#ifndef OFF_TASK_FLAGS
#define OFF_TASK_FLAGS offsetof(struct task_struct, flags)
#endif
#ifndef OFF_TASK_REAL_PARENT
#define OFF_TASK_REAL_PARENT offsetof(struct task_struct, real_parent)
#endif
#ifndef OFF_TASK_TGID
#define OFF_TASK_TGID offsetof(struct task_struct, tgid)
#endif
#ifndef OFF_TASK_FILES
#define OFF_TASK_FILES offsetof(struct task_struct, files)
#endif
#ifndef OFF_TASK_GROUP_LEADER
#define OFF_TASK_GROUP_LEADER offsetof(struct task_struct, group_leader)
#endif
#ifndef OFF_TASK_COMM
#define OFF_TASK_COMM offsetof(struct task_struct, comm)
#endif
#ifndef OFF_NSPROXY_NET_NS
#define OFF_NSPROXY_NET_NS offsetof(struct nsproxy, net_ns)
#endif
#ifndef OFF_NET_NS_INUM
#define OFF_NET_NS_INUM offsetof(struct net, ns.inum)
#endif
#ifndef OFF_FILES_FDT
#define OFF_FILES_FDT offsetof(struct files_struct, fdt)
#endif
#ifndef OFF_FDT_MAX_FDS
#define OFF_FDT_MAX_FDS offsetof(struct fdtable, max_fds)
#endif
#ifndef OFF_FDT_FD
#define OFF_FDT_FD offsetof(struct fdtable, fd)
#endif
#ifndef OFF_FILE_F_INODE
#define OFF_FILE_F_INODE offsetof(struct file, f_inode)
#endif
#ifndef OFF_FILE_PRIVATE_DATA
#define OFF_FILE_PRIVATE_DATA offsetof(struct file, private_data)
#endif
#ifndef OFF_INODE_I_MODE
#define OFF_INODE_I_MODE offsetof(struct inode, i_mode)
#endif
#ifndef OFF_SOCKET_SK
#define OFF_SOCKET_SK offsetof(struct socket, sk)
#endif
#ifndef OFF_SK_PROTOCOL
#define OFF_SK_PROTOCOL offsetof(struct sock, sk_protocol)
#endif
#ifndef OFF_SKC_DADDR
#define OFF_SKC_DADDR offsetof(struct sock_common, skc_daddr)
#endif
#ifndef OFF_SKC_RCV_SADDR
#define OFF_SKC_RCV_SADDR offsetof(struct sock_common, skc_rcv_saddr)
#endif
#ifndef OFF_SKC_DPORT
#define OFF_SKC_DPORT offsetof(struct sock_common, skc_dport)
#endif
#ifndef OFF_SKC_NUM
#define OFF_SKC_NUM offsetof(struct sock_common, skc_num)
#endif
#ifndef OFF_SKC_FAMILY
#define OFF_SKC_FAMILY offsetof(struct sock_common, skc_family)
#endif
#ifndef OFF_SKC_V6_DADDR
#define OFF_SKC_V6_DADDR offsetof(struct sock_common, skc_v6_daddr)
#endif
#ifndef OFF_SKC_V6_RCV_SADDR
#define OFF_SKC_V6_RCV_SADDR offsetof(struct sock_common, skc_v6_rcv_saddr)
#endif
#ifndef SOCK_TP
// 1: learn the socket from sock:sock_{send,recv}_length (Linux >= 6.3); 0: walk the fd table
#define SOCK_TP 1
#endif

// RINGBUF_RETRY: on Linux 6.18 a ring buffer reservation fails now and then, quickly (~0.3 us),
// while the ring is nearly empty (measured: about one in 300k writes, with 0.05-3 MB of a 32 MB
// ring in use, both CPUs producing; an immediate second attempt on the same ring did not
// always succeed). The cause was the consumer writing its position byte by byte (see
// docs/bpf.md); it no longer does. The retry stays as a cheap safety net: a failed write is
// tried once more on `events`, then on `rescue`, which the consumer reads like `events`; but
// only when the previous write on this CPU succeeded: a ring that is really full fails every
// time, and then costs no extra attempts. What still fails is counted as ringbuf_full.

// Hide a value from clang so that a following bound check/mask is kept in the same register
// the verifier looks at (clang otherwise drops a mask it can prove redundant).
#define BARRIER_VAR(x) asm volatile("" : "+r"(x))

// ---- values shared with capture/probe.py (keep in sync) ----
#define KIND_MSG 1
#define KIND_CONNECT 2
#define KIND_EXEC 3

#define SC_SENDTO 1
#define SC_SENDMSG 2
#define SC_SENDMMSG 3
#define SC_WRITE 4
#define SC_WRITEV 5
#define SC_RECVFROM 6
#define SC_RECVMSG 7
#define SC_RECVMMSG 8
#define SC_READ 9
#define SC_READV 10
#define SC_IS_RECV(s) ((s) >= SC_RECVFROM)

#define F_SRC_ADDR 1
#define F_SRC_PORT 2
#define F_DST_ADDR 4
#define F_DST_PORT 8
#define F_SOCK 16
#define F_PROTO 32

#define LOST_RINGBUF_FULL 0
#define LOST_PAYLOAD_UNREADABLE 1
#define LOST_MMSG_OVER_BOUND 2
#define LOST_IOV_OVER_BOUND 3
#define LOST_PENDING_FULL 4
#define LOST_UNTRACKED_SOCKET_IO 5
#define LOST_MSGHDR_UNREADABLE 6
#define LOST_CONNECT_PENDING_FULL 7
#define N_LOST 8

#define FD_DNS 1        // connect()ed to a DNS port, or seen moving DNS
#define FD_CANDIDATE 2  // accept()ed: a socket, ports unknown until its first read/write
#define FD_NOT_DNS 3    // a socket whose ports are not in the set
#define FD_SOCKET 4     // created by socket(): type known (for connect events), not traced
#define T_STREAM 1  // SOCK_STREAM
#define T_DGRAM 2   // SOCK_DGRAM

// ---- records sent to user space (little endian, 8-byte aligned) ----
struct ev_common {
    u8 kind;
    u8 syscall;
    u8 direction;
    u8 protocol;
    u8 family;
    u8 flags;
    u16 msg_index;
    u32 tgid;
    u32 tid;
    u32 uid;
    u32 netns;
    u64 mono_ns;
    u64 cgroup_id;
    char comm[16];
};  // 56 bytes

struct ev_msg {
    struct ev_common c;
    u64 sock_id;
    u8 src_addr[16];
    u8 dst_addr[16];
    u16 src_port;
    u16 dst_port;
    s32 fd;
    u32 orig_len;
    u32 cap_len;
    // room for (offset <= OFF_MASK) + (chunk <= OFF_MASK): the verifier bounds both separately
    u8 payload[2 * (OFF_MASK + 1)];
};
#define EV_MSG_HDR (sizeof(struct ev_common) + 8 + 32 + 8 + 8)

struct ev_connect {
    struct ev_common c;
    u8 dst_addr[16];
    u16 dst_port;
    u16 _pad;
    s32 fd;
    s32 result;
    u32 _pad2;
    s64 latency_ns;
};

struct ev_exec {
    struct ev_common c;
    u32 ppid;
    u32 _pad;
    char filename[256];
};

// ---- in-kernel state ----
// One syscall's worth of context: the socket side (filled by the sock tracepoints, or by the
// fd-table walk) and the syscall's arguments (filled at sys_exit from the saved registers).
#define SOCK_DROPPED 2  // sock_seen: this syscall's messages are counted as ringbuf_full
struct pending_t {
    u64 sk;
    u64 buf;        // buf / msghdr* / mmsghdr* / iovec*
    u64 addr;       // sockaddr* (sendto/recvfrom)
    u64 alen;       // socklen_t* (recvfrom: how much of *addr the kernel filled in)
    u32 len;        // buf len / vlen / iovcnt
    s32 fd;
    u8 syscall;
    u8 sock_seen;   // the socket side is filled in (SOCK_TP: the slot is armed; SOCK_DROPPED: see on_sock_io)
    u8 family;
    u8 protocol;
    u16 lport;
    u16 rport;
    u8 laddr[16];
    u8 raddr[16];
    u8 no_syscalls; // SOCK_TP: a kernel thread or an io_uring worker (see on_sock_io)
    u8 _pad;
    u16 seen;       // SOCK_TP: DNS-port messages of this syscall so far (untracked_socket_io)
};

// The user registers saved at syscall entry, from r10 to orig_ax (x86_64 struct pt_regs order).
// The syscall's arguments are di, si, dx, r10, r8, r9; the kernel leaves them as they were.
struct sc_regs_t {
    u64 r10;
    u64 r9;
    u64 r8;
    u64 ax;
    u64 cx;
    u64 dx;
    u64 si;
    u64 di;
    u64 orig_ax;
};

struct conn_t {
    u64 ts;
    s32 fd;
    u16 family;
    u16 port;
    u8 addr[16];
};

struct fd_state_t {
    u8 state;
    u8 type;  // SOCK_STREAM / SOCK_DGRAM or 0
};

struct comm_key {
    char comm[16];
};

struct sock_args_t {
    u32 family;
    u32 type;
};

BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
BPF_RINGBUF_OUTPUT(rescue, RESCUE_PAGES);  // see RINGBUF_RETRY
#if SOCK_TP
BPF_TASK_STORAGE(slots, struct pending_t);
#else
BPF_PERCPU_ARRAY(pending_scratch, struct pending_t, 1);  // too big for the stack with the rest
#endif
BPF_HASH(conn_pending, u64, struct conn_t, 16384);
BPF_HASH(socket_args, u64, struct sock_args_t, 16384);
BPF_TABLE("lru_hash", u64, struct fd_state_t, fd_state, 65536);
BPF_ARRAY(ports, u8, 65536);  // 1 at the index of each port in the set: a direct load
// unconnected sockets that sent to a DNS port (see is_dns)
BPF_TABLE("lru_hash", u64, u8, dns_socks, 16384);
BPF_HASH(pids, u32, u8, 1024);
BPF_HASH(comms, struct comm_key, u8, 256);
BPF_HASH(cgroups, u64, u8, 4096);
BPF_ARRAY(config, u64, 4);  // [0]: 1 = cgroup filter in force
BPF_PERCPU_ARRAY(lost, u64, N_LOST);
BPF_PERCPU_ARRAY(scratch, struct ev_msg, 1);
BPF_PERCPU_ARRAY(rb_failed, u8, 1);  // 1: the last ring write on this CPU failed

static __always_inline void count_lost(u32 cause, u64 n) {
    u64 *v = lost.lookup(&cause);
    if (v)
        *v += n;
}

static __always_inline int ringbuf_retry(void) {
    u32 zero = 0;
    u8 *failed = rb_failed.lookup(&zero);
    return failed && !*failed;
}

static __always_inline void ringbuf_result(int ok) {
    u32 zero = 0;
    u8 *failed = rb_failed.lookup(&zero);
    if (failed)
        *failed = !ok;
}

// ring_query(what) = bpf_ringbuf_query(events, what). BCC has no map method for it and does not
// rewrite `&events` in a plain helper call, but it does turn `events.ringbuf_reserve(x)` into
// `bpf_ringbuf_reserve(<map>, x, 0)` before compiling the result: the macro below, defined
// only around that one call, makes that call a query of the same map.
static __always_inline u64 ring_query(u64 what) {
#define bpf_ringbuf_reserve(map, what, flags) ((void *)bpf_ringbuf_query(map, what))
    return (u64)events.ringbuf_reserve(what);
#undef bpf_ringbuf_reserve
}

// Less than RING_HEADROOM bytes free (an eighth of the ring, at most 64 KB): a message is
// counted as ringbuf_full without trying to write it. A refused reservation takes the ring's
// lock; this is two loads. On a node saturated with DNS, where user space cannot keep up,
// most messages end here, in sock_send_length/sock_recv_length before the thread is armed.
#define RING_BYTES ((u64)RINGBUF_PAGES * PAGE_SIZE)
#define RING_HEADROOM (RING_BYTES / 8 < 65536 ? RING_BYTES / 8 : 65536)
static __always_inline int ring_full(void) {
    return ring_query(BPF_RB_AVAIL_DATA) > RING_BYTES - RING_HEADROOM;
}

// The last write on this CPU failed and the ring is still (nearly) full: count the next one
// without trying. Checked only after a failure, so that a write while the ring has room goes
// through the retry and the rescue ring as RINGBUF_RETRY says.
static __always_inline int ring_still_full(void) {
    u32 zero = 0;
    u8 *failed = rb_failed.lookup(&zero);
    return failed && *failed && ring_full();
}

// Copy a record into the ring (see RINGBUF_RETRY); what cannot be written is counted.
static __always_inline void ring_write(void *data, u32 size) {
    if (ring_still_full()) {
        count_lost(LOST_RINGBUF_FULL, 1);
        return;
    }
    int err = events.ringbuf_output(data, size, BPF_RB_NO_WAKEUP);
    if (err && ringbuf_retry()) {
        err = events.ringbuf_output(data, size, BPF_RB_NO_WAKEUP);
        if (err)
            err = rescue.ringbuf_output(data, size, BPF_RB_NO_WAKEUP);
    }
    ringbuf_result(!err);
    if (err)
        count_lost(LOST_RINGBUF_FULL, 1);
}

static __always_inline int pass_filters(u64 pid_tgid) {
#if FILTER_PIDS
    u32 tgid = pid_tgid >> 32;
    if (!pids.lookup(&tgid))
        return 0;
#endif
#if FILTER_COMMS
    // the thread's name, or its process's (the thread-group leader's): dig's messages come
    // from a thread named isc-net-0000, and --comm dig must find them
    struct comm_key ck = {};
    bpf_get_current_comm(&ck.comm, sizeof(ck.comm));
    if (!comms.lookup(&ck)) {
        u64 task = (u64)bpf_get_current_task();
        u64 leader = 0;
        struct comm_key lk = {};
        bpf_probe_read_kernel(&leader, sizeof(leader), (void *)(task + OFF_TASK_GROUP_LEADER));
        if (!leader || leader == task
            || bpf_probe_read_kernel(&lk.comm, sizeof(lk.comm), (void *)(leader + OFF_TASK_COMM))
            || !comms.lookup(&lk))
            return 0;
    }
#endif
    u32 zero = 0;
    u64 *cg_on = config.lookup(&zero);
    if (FILTER_CGROUPS || (cg_on && *cg_on)) {
        u64 cg = bpf_get_current_cgroup_id();
        if (!cgroups.lookup(&cg))
            return 0;
    }
    return 1;
}

static __always_inline int port_match(u16 port) {
#if FILTER_PORTS
    u32 key = port;
    u8 *on = ports.lookup(&key);
    return port && on && *on;
#else
    return 1;
#endif
}

static __always_inline void fill_common(struct ev_common *c, u8 kind) {
    u64 pid_tgid = bpf_get_current_pid_tgid();
    c->kind = kind;
    c->tgid = pid_tgid >> 32;
    c->tid = (u32)pid_tgid;
    c->uid = (u32)bpf_get_current_uid_gid();
    c->mono_ns = bpf_ktime_get_ns();
    c->cgroup_id = bpf_get_current_cgroup_id();
    bpf_get_current_comm(&c->comm, sizeof(c->comm));
    u64 task = (u64)bpf_get_current_task();
    u64 nsproxy = 0, net = 0;
    u32 inum = 0;
    bpf_probe_read_kernel(&nsproxy, sizeof(nsproxy), (void *)(task + OFF_TASK_NSPROXY));
    if (nsproxy)
        bpf_probe_read_kernel(&net, sizeof(net), (void *)(nsproxy + OFF_NSPROXY_NET_NS));
    if (net)
        bpf_probe_read_kernel(&inum, sizeof(inum), (void *)(net + OFF_NET_NS_INUM));
    c->netns = inum;
}

// Read a user sockaddr (in or in6). Returns the family (0 when unusable).
static __always_inline u16 read_sockaddr(u64 uaddr, u8 *addr, u16 *port) {
    struct sockaddr_in6 sa = {};
    if (!uaddr)
        return 0;
    if (bpf_probe_read_user(&sa, sizeof(sa), (void *)uaddr) != 0)
        return 0;
    if (sa.sin6_family == AF_INET) {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&sa;
        __builtin_memcpy(addr, &s4->sin_addr.s_addr, 4);
        *port = bpf_ntohs(s4->sin_port);
        return AF_INET;
    }
    if (sa.sin6_family == AF_INET6) {
        __builtin_memcpy(addr, &sa.sin6_addr, 16);
        *port = bpf_ntohs(sa.sin6_port);
        return AF_INET6;
    }
    return 0;
}

// The SC_* code of a syscall number, 0 for the syscalls we do not read.
static __always_inline u8 sc_code(u64 nr) {
    switch (nr) {
    case __NR_sendto: return SC_SENDTO;
    case __NR_sendmsg: return SC_SENDMSG;
    case __NR_sendmmsg: return SC_SENDMMSG;
    case __NR_write: return SC_WRITE;
    case __NR_writev: return SC_WRITEV;
    case __NR_recvfrom: return SC_RECVFROM;
    case __NR_recvmsg: return SC_RECVMSG;
    case __NR_recvmmsg: return SC_RECVMMSG;
    case __NR_read: return SC_READ;
    case __NR_readv: return SC_READV;
    }
    return 0;
}

// The syscall's arguments, as the syscall saw them, into p.
static __always_inline void take_args(struct pending_t *p, u8 sc, struct sc_regs_t *r) {
    p->syscall = sc;
    p->fd = (s32)r->di;
    p->buf = r->si;                  // buf / msghdr* / mmsghdr* / iovec*
    p->len = (u32)r->dx;             // len / vlen / iovcnt (sendmsg/recvmsg: flags, unused)
    p->addr = 0;
    p->alen = 0;
    if (sc == SC_SENDTO || sc == SC_RECVFROM) {
        p->addr = r->r8;
        if (sc == SC_RECVFROM)
            p->alen = r->r9;
    }
}

// ---- the socket: endpoints and identity ----
// What the probe needs from a struct sock first: family, protocol, ports, and the IPv4
// addresses (0 for IPv6 sockets, whose addresses fill_sock reads).
struct sock_head_t {
    u32 daddr;
    u32 saddr;
    u16 family;
    u16 protocol;
    u16 lport;
    u16 rport;
};

// struct sock_common begins with skc_daddr, skc_rcv_saddr, skc_hash, skc_dport, skc_num and
// skc_family, in that order with no gap: one read takes all of them (the kernel's BTF gives
// the offsets; a kernel laid out otherwise takes the member reads below).
struct skc_prefix_t {
    u32 daddr;
    u32 rcv_saddr;
    u32 hash;
    u16 dport_be;
    u16 num;
    u16 family;
    u16 _pad;
};
#define SKC_PREFIX_CONTIGUOUS (OFF_SKC_RCV_SADDR == OFF_SKC_DADDR + 4 \
    && OFF_SKC_DPORT == OFF_SKC_DADDR + 12 && OFF_SKC_NUM == OFF_SKC_DADDR + 14 \
    && OFF_SKC_FAMILY == OFF_SKC_DADDR + 16)

// The head of a struct sock; 0 unless it is TCP/UDP over IPv4/IPv6. Two reads on the kernels
// this runs on (this is on the path of every socket send and receive on the node).
static __always_inline int sock_basics(u64 sk, struct sock_head_t *h) {
    if (SKC_PREFIX_CONTIGUOUS) {
        struct skc_prefix_t pre = {};
        bpf_probe_read_kernel(&pre, sizeof(pre), (void *)(sk + OFF_SKC_DADDR));
        h->family = pre.family;
        h->lport = pre.num;
        h->rport = bpf_ntohs(pre.dport_be);
        h->daddr = pre.daddr;
        h->saddr = pre.rcv_saddr;
    } else {
        u16 rport_be = 0;
        bpf_probe_read_kernel(&h->family, 2, (void *)(sk + OFF_SKC_FAMILY));
        bpf_probe_read_kernel(&rport_be, 2, (void *)(sk + OFF_SKC_DPORT));
        bpf_probe_read_kernel(&h->lport, 2, (void *)(sk + OFF_SKC_NUM));
        h->rport = bpf_ntohs(rport_be);
        h->daddr = 0;
        h->saddr = 0;
        if (h->family == AF_INET) {
            bpf_probe_read_kernel(&h->saddr, 4, (void *)(sk + OFF_SKC_RCV_SADDR));
            bpf_probe_read_kernel(&h->daddr, 4, (void *)(sk + OFF_SKC_DADDR));
        }
    }
    if (h->family != AF_INET && h->family != AF_INET6)
        return 0;
    h->protocol = 0;
    bpf_probe_read_kernel(&h->protocol, 2, (void *)(sk + OFF_SK_PROTOCOL));
    return h->protocol == IPPROTO_UDP || h->protocol == IPPROTO_TCP;
}

static __always_inline void fill_sock(struct pending_t *p, u64 sk, struct sock_head_t *h) {
    p->sock_seen = 1;
    p->sk = sk;
    p->family = h->family;
    p->protocol = h->protocol;
    p->lport = h->lport;
    p->rport = h->rport;
    if (h->family == AF_INET) {
        __builtin_memset(p->laddr, 0, 32);
        __builtin_memcpy(p->laddr, &h->saddr, 4);
        __builtin_memcpy(p->raddr, &h->daddr, 4);
    } else {
        bpf_probe_read_kernel(p->laddr, 16, (void *)(sk + OFF_SKC_V6_RCV_SADDR));
        bpf_probe_read_kernel(p->raddr, 16, (void *)(sk + OFF_SKC_V6_DADDR));
    }
}

#if SOCK_TP
// sock_send_length(sk, ret, flags) / sock_recv_length(sk, ret, flags) fire inside every
// socket send/recv (each message of an mmsg vector; read/write on sockets too).
static __always_inline void on_sock_io(u64 sk, long ret, int flags, u8 is_recv) {
    if (is_recv && (flags & MSG_PEEK))
        return;  // the real read follows; recording the peek would duplicate the message
    struct sock_head_t h;
    if (!sock_basics(sk, &h))
        return;
    // A UDP socket with no peer sends and receives with an address per message, which
    // sys_exit reads: arm for it. Any other socket: only with a port in the set.
    u8 dns_port = port_match(h.lport) || port_match(h.rport);
    if (!dns_port && !(h.protocol == IPPROTO_UDP && !h.rport))
        return;
    struct task_struct *task = (struct task_struct *)bpf_get_current_task_btf();
    struct pending_t *p = slots.task_storage_get(task, 0, 0);
    if (p && p->sock_seen) {
        // Later messages of the same syscall on a candidate socket: a sendmmsg/recvmmsg
        // vector, which sys_exit emits whole, unless the first message found the ring full
        // (below; then each is counted here); or more socket I/O of a syscall sys_exit does
        // not read (io_uring_enter running several operations), counted there by `seen`.
        if (p->sock_seen == SOCK_DROPPED && ret > 0)
            count_lost(LOST_RINGBUF_FULL, 1);
        else if (dns_port && ret > 0 && p->seen < 0xffff)
            p->seen++;
        return;
    }
    if (!pass_filters(bpf_get_current_pid_tgid()))
        return;
    if (!p) {
        p = slots.task_storage_get(task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
        if (!p) {
            count_lost(LOST_PENDING_FULL, 1);
            return;
        }
        // A new slot (once per thread): is this a thread that never makes a syscall?
        u32 pf = 0;
        bpf_probe_read_kernel(&pf, sizeof(pf), (void *)((u64)task + OFF_TASK_FLAGS));
        p->no_syscalls = (pf & (0x00200000 | 0x00000010)) != 0;  // PF_KTHREAD | PF_IO_WORKER
    }
    if (p->no_syscalls) {
        // an io_uring worker or a kernel thread: no sys_exit will read this message, and an
        // armed slot would never be disarmed: such a slot returns here, never armed
        if (dns_port && ret > 0)
            count_lost(LOST_UNTRACKED_SOCKET_IO, 1);
        return;
    }
    p->seen = dns_port && ret > 0;
    if (dns_port && ret > 0 && ring_full()) {
        // A DNS message (sys_exit would emit exactly this one) that the ring has no room
        // for: counted here, and sys_exit only disarms (so the rest of an mmsg vector is
        // counted too, never half emitted). Sockets whose messages carry their own address
        // are decided at exit, where a write skips the attempt (ring_still_full) once the
        // previous write on that CPU failed.
        count_lost(LOST_RINGBUF_FULL, 1);
        p->sock_seen = SOCK_DROPPED;
        return;
    }
    fill_sock(p, sk, &h);
}

// Raw tracepoint arguments are widened to u64 without sign extension: `int ret` must be cast
// back to int (a failed recv, -EAGAIN, would otherwise read as a large positive length).
RAW_TRACEPOINT_PROBE(sock_send_length) {
    on_sock_io(ctx->args[0], (int)ctx->args[1], (int)ctx->args[2], 0);
    return 0;
}
RAW_TRACEPOINT_PROBE(sock_recv_length) {
    on_sock_io(ctx->args[0], (int)ctx->args[1], (int)ctx->args[2], 1);
    return 0;
}
#else
// Kernels before 6.3 lack the sock tracepoints: at syscall exit, follow
// current->files->fdt->fd[fd] to the struct file, check that it is a socket inode, and take
// file->private_data (struct socket)->sk. Offsets come from BTF, so this is exact.
static __always_inline void sock_from_fd(struct pending_t *p) {
    u64 task = (u64)bpf_get_current_task();
    u64 files = 0, fdt = 0, fdarr = 0, file = 0, inode = 0, sock = 0, sk = 0;
    u32 max_fds = 0;
    u16 mode = 0;
    struct sock_head_t h;
    if (p->fd < 0)
        return;
    bpf_probe_read_kernel(&files, 8, (void *)(task + OFF_TASK_FILES));
    if (!files)
        return;
    bpf_probe_read_kernel(&fdt, 8, (void *)(files + OFF_FILES_FDT));
    if (!fdt)
        return;
    bpf_probe_read_kernel(&max_fds, 4, (void *)(fdt + OFF_FDT_MAX_FDS));
    if ((u32)p->fd >= max_fds)
        return;
    bpf_probe_read_kernel(&fdarr, 8, (void *)(fdt + OFF_FDT_FD));
    if (!fdarr)
        return;
    bpf_probe_read_kernel(&file, 8, (void *)(fdarr + (u64)p->fd * 8));
    if (!file)
        return;
    bpf_probe_read_kernel(&inode, 8, (void *)(file + OFF_FILE_F_INODE));
    if (!inode)
        return;
    bpf_probe_read_kernel(&mode, 2, (void *)(inode + OFF_INODE_I_MODE));
    if ((mode & 00170000) != 0140000)  // S_IFMT, S_IFSOCK
        return;
    bpf_probe_read_kernel(&sock, 8, (void *)(file + OFF_FILE_PRIVATE_DATA));
    if (!sock)
        return;
    bpf_probe_read_kernel(&sk, 8, (void *)(sock + OFF_SOCKET_SK));
    if (!sk)
        return;
    if (!sock_basics(sk, &h))
        return;
    fill_sock(p, sk, &h);
}
#endif

// ---- exit: read the buffers, emit ----
static __always_inline int is_zero(const u8 *a, int n) {
    u64 x = 0;
#pragma unroll
    for (int i = 0; i < 16; i++)
        if (i < n)
            x |= a[i];
    return x == 0;
}

// Copy up to `total` bytes spread over an iovec array into e->payload. Returns bytes copied.
static __always_inline u32 gather_iov(struct ev_msg *e, u64 iov_ptr, u32 iovcnt, u32 total) {
    u32 off = 0;
    for (int i = 0; i < MAX_IOV; i++) {
        if (i >= iovcnt || off >= total)
            break;
        struct iovec iov = {};
        if (bpf_probe_read_user(&iov, sizeof(iov), (void *)(iov_ptr + i * sizeof(struct iovec))) != 0)
            break;
        u32 chunk = iov.iov_len > (u64)(total - off) ? total - off : (u32)iov.iov_len;
        if (chunk > MAX_PAYLOAD)
            chunk = MAX_PAYLOAD;
        if (off >= MAX_PAYLOAD)
            break;
        u32 o = off, c = chunk;
        BARRIER_VAR(o);
        BARRIER_VAR(c);
        o &= OFF_MASK;
        c &= OFF_MASK;
        if (c && bpf_probe_read_user(&e->payload[o], c, iov.iov_base) != 0)
            break;
        off += chunk;
    }
    if (off < total && iovcnt > MAX_IOV)
        count_lost(LOST_IOV_OVER_BOUND, 1);
    return off;
}

// Is the message DNS by the port set? Checked before any event is built, so that non-DNS
// socket traffic costs no more than this.
static __always_inline int is_dns(struct pending_t *p, u8 is_recv, u16 mfam, u16 mport) {
    u16 rport = mfam ? mport : p->rport;
    if (!port_match(p->lport) && !port_match(rport)) {
        // An unconnected socket that sent to a DNS port and now receives with no source
        // address asked for (recvfrom(..., NULL, NULL), as dnsperf does): the datagram is
        // the answer, from an unknown peer.
        if (!is_recv || mfam || p->rport || !dns_socks.lookup(&p->sk))
            return 0;
    } else if (!is_recv && mfam && !port_match(p->lport) && !dns_socks.lookup(&p->sk)) {
        u8 one = 1;
        dns_socks.update(&p->sk, &one);
    }
    return 1;
}
// Fill addresses/ports of e from the socket (p) and the message's own address (if any).
static __always_inline void set_endpoints(struct ev_msg *e, struct pending_t *p, u8 is_recv,
                                          u16 mfam, u8 *maddr, u16 mport) {
    u8 *laddr = p->laddr, *raddr = p->raddr;
    u16 rport = p->rport;
    u8 rfl = 0, lfl = 0;
    u8 alen = p->family == AF_INET6 ? 16 : 4;
    if (mfam) {
        raddr = maddr;
        rport = mport;
        rfl = F_DST_ADDR | F_DST_PORT;
        alen = mfam == AF_INET6 ? 16 : 4;
        e->c.family = mfam;
    } else {
        e->c.family = p->family;
        if (!is_zero(raddr, alen))
            rfl |= F_DST_ADDR;
        if (rport)
            rfl |= F_DST_PORT;
    }
    u8 lalen = p->family == AF_INET6 ? 16 : 4;
    if (!is_zero(laddr, lalen))
        lfl |= F_SRC_ADDR;
    if (p->lport)
        lfl |= F_SRC_PORT;
    // lfl/rfl are in "send" orientation: local = src, remote = dst
    if (is_recv) {
        __builtin_memcpy(e->src_addr, raddr, 16);
        __builtin_memcpy(e->dst_addr, laddr, 16);
        e->src_port = rport;
        e->dst_port = p->lport;
        e->c.flags |= ((rfl & F_DST_ADDR) ? F_SRC_ADDR : 0) | ((rfl & F_DST_PORT) ? F_SRC_PORT : 0)
                    | ((lfl & F_SRC_ADDR) ? F_DST_ADDR : 0) | ((lfl & F_SRC_PORT) ? F_DST_PORT : 0);
    } else {
        __builtin_memcpy(e->src_addr, laddr, 16);
        __builtin_memcpy(e->dst_addr, raddr, 16);
        e->src_port = p->lport;
        e->dst_port = rport;
        e->c.flags |= lfl | rfl;
    }
}

static __always_inline void emit_msg(struct ev_msg *e, u32 cap) {
    if (cap > MAX_PAYLOAD)
        cap = MAX_PAYLOAD;
    e->cap_len = cap;
    u32 size = cap <= SLOT_SMALL ? EV_MSG_HDR + SLOT_SMALL : EV_MSG_HDR + SLOT_BIG;
    ring_write(e, size);
}

// The header of a message record (every field: a reserved ring slot holds old bytes).
static __always_inline void fill_msg(struct ev_msg *e, struct pending_t *p, u8 is_recv, u16 index) {
    fill_common(&e->c, KIND_MSG);
    e->c.syscall = p->syscall;
    e->c.direction = is_recv;
    e->c.protocol = p->protocol == IPPROTO_TCP ? 6 : (p->protocol == IPPROTO_UDP ? 17 : 0);
    e->c.flags = F_SOCK | (e->c.protocol ? F_PROTO : 0);
    e->c.msg_index = index;
    e->fd = p->fd;
    u64 x = (p->sk ^ SOCK_SALT) * 0x9E3779B97F4A7C15ULL;
    e->sock_id = x ^ (x >> 31);
    e->src_port = 0;
    e->dst_port = 0;
}

static __always_inline struct ev_msg *prepare(struct pending_t *p, u8 is_recv) {
    u32 zero = 0;
    struct ev_msg *e = scratch.lookup(&zero);
    if (!e)
        return 0;
    fill_msg(e, p, is_recv, 0);
    __builtin_memset(e->src_addr, 0, 32);
    return e;
}

// One message whose payload is one user buffer (the common case: sendto/recvfrom, read/write,
// a msghdr or readv/writev with one iovec): reserve the ring slot first, so that a full ring
// costs nothing more, and build the record in place. `slot` is a constant per call site.
static __always_inline void emit_direct_slot(struct pending_t *p, u8 is_recv, u16 index,
                                             u16 mfam, u8 *maddr, u16 mport, u64 src, u32 want,
                                             u32 orig_len, const u32 slot) {
    if (ring_still_full()) {
        count_lost(LOST_RINGBUF_FULL, 1);
        return;
    }
    struct ev_msg *e = events.ringbuf_reserve(EV_MSG_HDR + slot);
    if (!e && ringbuf_retry()) {
        e = events.ringbuf_reserve(EV_MSG_HDR + slot);
        if (!e)
            e = rescue.ringbuf_reserve(EV_MSG_HDR + slot);
    }
    ringbuf_result(e != 0);
    if (!e) {
        count_lost(LOST_RINGBUF_FULL, 1);
        return;
    }
    fill_msg(e, p, is_recv, index);
    set_endpoints(e, p, is_recv, mfam, maddr, mport);
    e->orig_len = orig_len;
    u64 n = want;
    // Clamp in one asm block whose immediate is this call site's slot: clang can merge the
    // two call sites' code after it, but not the bound, which the verifier checks per path.
    asm volatile("if %[n] <= %[max] goto +1; %[n] = %[max]" : [n] "+r"(n) : [max] "i"(slot));
    if (n && bpf_probe_read_user(e->payload, n, (void *)src) != 0) {
        count_lost(LOST_PAYLOAD_UNREADABLE, 1);
        n = 0;
    }
    e->cap_len = n;
    events.ringbuf_submit(e, BPF_RB_NO_WAKEUP);
}

static __always_inline void emit_direct(struct pending_t *p, u8 is_recv, u16 index, u16 mfam,
                                        u8 *maddr, u16 mport, u64 src, u32 want, u32 orig_len) {
    if (want > MAX_PAYLOAD)
        want = MAX_PAYLOAD;
    if (want <= SLOT_SMALL)
        emit_direct_slot(p, is_recv, index, mfam, maddr, mport, src, want, orig_len, SLOT_SMALL);
    else
        emit_direct_slot(p, is_recv, index, mfam, maddr, mport, src, want, orig_len, SLOT_BIG);
}

// A payload spread over several iovecs: gathered in the per-CPU scratch record, then copied.
static __always_inline void emit_iov(struct pending_t *p, u8 is_recv, u16 index, u16 mfam,
                                     u8 *maddr, u16 mport, u64 iov_ptr, u32 iovcnt, u32 len) {
    struct ev_msg *e = prepare(p, is_recv);
    if (!e)
        return;
    e->c.msg_index = index;
    set_endpoints(e, p, is_recv, mfam, maddr, mport);
    e->orig_len = len;
    u32 want = len > MAX_PAYLOAD ? MAX_PAYLOAD : len;
    u32 got = gather_iov(e, iov_ptr, iovcnt, want);
    if (got < want)
        count_lost(LOST_PAYLOAD_UNREADABLE, 1);
    emit_msg(e, got);
}

// The payload of a message in an iovec array: direct when the first iovec holds all of it
// (or at least a snaplen's worth).
static __always_inline void emit_vec(struct pending_t *p, u8 is_recv, u16 index, u16 mfam,
                                     u8 *maddr, u16 mport, u64 iov_ptr, u32 iovcnt, u32 len) {
    struct iovec iov0 = {};
    if (iovcnt >= 1 && bpf_probe_read_user(&iov0, sizeof(iov0), (void *)iov_ptr) == 0
        && (iov0.iov_len >= (u64)len || iov0.iov_len >= MAX_PAYLOAD)) {
        emit_direct(p, is_recv, index, mfam, maddr, mport, (u64)iov0.iov_base, len, len);
        return;
    }
    emit_iov(p, is_recv, index, mfam, maddr, mport, iov_ptr, iovcnt, len);
}

// One message described by a user msghdr (sendmsg/recvmsg, or one element of an mmsg vector:
// `vector` = 1 takes the scratch path only, which keeps the unrolled vector loop small enough
// for the verifier).
static __always_inline void emit_msghdr(struct pending_t *p, u64 msghdr_ptr, u32 len, u16 index,
                                        u8 is_recv, const int vector) {
    struct user_msghdr mh = {};
    if (bpf_probe_read_user(&mh, sizeof(mh), (void *)msghdr_ptr) != 0) {
        count_lost(LOST_MSGHDR_UNREADABLE, 1);
        return;
    }
    u8 maddr[16] = {};
    u16 mport = 0, mfam = 0;
    if (mh.msg_name && mh.msg_namelen >= sizeof(struct sockaddr_in))
        mfam = read_sockaddr((u64)mh.msg_name, maddr, &mport);
    if (!is_dns(p, is_recv, mfam, mport))
        return;
    if (vector)
        emit_iov(p, is_recv, index, mfam, maddr, mport, (u64)mh.msg_iov, (u32)mh.msg_iovlen, len);
    else
        emit_vec(p, is_recv, index, mfam, maddr, mport, (u64)mh.msg_iov, (u32)mh.msg_iovlen, len);
}

static __always_inline void on_exit(struct pending_t *p, long ret) {
    u8 sc = p->syscall;
    u8 is_recv = SC_IS_RECV(sc);
#if !SOCK_TP
    if (sc == SC_READ || sc == SC_WRITE || sc == SC_READV || sc == SC_WRITEV) {
        u64 key = (bpf_get_current_pid_tgid() & 0xffffffff00000000ULL) | (u32)p->fd;
        if (!p->sock_seen) {
            // No socket behind the fd any more (closed and reused for a file).
            if (ret > 0)
                fd_state.delete(&key);
            return;
        }
        if (!port_match(p->lport) && !port_match(p->rport)) {
            struct fd_state_t st = {FD_NOT_DNS, 0};
            fd_state.update(&key, &st);
            return;
        }
        struct fd_state_t *cur = fd_state.lookup(&key);
        if (cur && cur->state == FD_CANDIDATE)
            cur->state = FD_DNS;
    }
#endif
    if (ret <= 0 || !p->sock_seen)
        return;

    if (sc == SC_SENDTO || sc == SC_RECVFROM || sc == SC_WRITE || sc == SC_READ) {
        u8 maddr[16] = {};
        u16 mport = 0, mfam = 0;
        if (p->addr) {
            // recvfrom: the kernel says in *addrlen how much of the address it wrote (0 for
            // TCP, which leaves the buffer alone)
            int alen = sizeof(struct sockaddr_in);
            if (p->alen && bpf_probe_read_user(&alen, sizeof(alen), (void *)p->alen) != 0)
                alen = 0;
            if (alen >= (int)sizeof(struct sockaddr_in))
                mfam = read_sockaddr(p->addr, maddr, &mport);
        }
        if (!is_dns(p, is_recv, mfam, mport))
            return;
        u32 want = (u64)ret > MAX_PAYLOAD ? MAX_PAYLOAD : (u32)ret;
        if (want > p->len)
            want = p->len;  // recvfrom(MSG_TRUNC) returns the datagram size, not what was copied
        emit_direct(p, is_recv, 0, mfam, maddr, mport, p->buf, want, (u32)ret);
    } else if (sc == SC_READV || sc == SC_WRITEV) {
        if (!is_dns(p, is_recv, 0, 0))
            return;
        emit_vec(p, is_recv, 0, 0, 0, 0, p->buf, p->len, (u32)ret);
    } else if (sc == SC_SENDMSG || sc == SC_RECVMSG) {
        emit_msghdr(p, p->buf, (u32)ret, 0, is_recv, 0);
    } else if (sc == SC_SENDMMSG || sc == SC_RECVMMSG) {
        // struct mmsghdr { struct user_msghdr msg_hdr; unsigned int msg_len; } (64 bytes)
        u32 n = (u32)ret;
        for (int i = 0; i < MAX_MMSG; i++) {
            if (i >= n)
                break;
            u64 mm = p->buf + (u64)i * 64;
            u32 mlen = 0;
            bpf_probe_read_user(&mlen, sizeof(mlen), (void *)(mm + sizeof(struct user_msghdr)));
            emit_msghdr(p, mm, mlen, i, is_recv, 1);
        }
        if (n > MAX_MMSG)
            count_lost(LOST_MMSG_OVER_BOUND, n - MAX_MMSG);
    }
}

// sys_exit(regs, ret): fires at the end of every syscall on the node.
RAW_TRACEPOINT_PROBE(sys_exit) {
    long ret = (long)ctx->args[1];
    struct sc_regs_t r = {};
#if SOCK_TP
    struct task_struct *task = (struct task_struct *)bpf_get_current_task_btf();
    struct pending_t *p = slots.task_storage_get(task, 0, 0);
    if (!p || !p->sock_seen)
        return 0;  // no socket I/O on a candidate socket in this syscall: the common case
    if (p->sock_seen == SOCK_DROPPED) {
        p->sock_seen = 0;  // counted already, in on_sock_io
        return 0;
    }
    if (bpf_probe_read_kernel(&r, sizeof(r), (void *)(ctx->args[0] + offsetof(struct pt_regs, r10))) == 0) {
        u8 sc = sc_code(r.orig_ax);
        if (sc) {
            take_args(p, sc, &r);
            on_exit(p, ret);
        } else if (p->seen) {
            // DNS-port socket I/O in a syscall we do not read: sendfile, splice, io_uring,
            // a 32-bit process's socketcall. Counted (each message), never silent.
            count_lost(LOST_UNTRACKED_SOCKET_IO, p->seen);
        }
    }
    p->sock_seen = 0;
#else
    if (bpf_probe_read_kernel(&r, sizeof(r), (void *)(ctx->args[0] + offsetof(struct pt_regs, r10))) != 0)
        return 0;
    u8 sc = sc_code(r.orig_ax);
    if (!sc)
        return 0;
    if (((sc == SC_RECVFROM || sc == SC_RECVMMSG) && (r.r10 & MSG_PEEK))
        || (sc == SC_RECVMSG && (r.dx & MSG_PEEK)))
        return 0;  // the real read follows
    u64 pid_tgid = bpf_get_current_pid_tgid();
    if (sc == SC_READ || sc == SC_WRITE || sc == SC_READV || sc == SC_WRITEV) {
        // read/write are the hottest syscalls on a node: only fds known as DNS sockets
        u64 key = (pid_tgid & 0xffffffff00000000ULL) | (u32)r.di;
        struct fd_state_t *st = fd_state.lookup(&key);
        if (!st || (st->state != FD_DNS && st->state != FD_CANDIDATE))
            return 0;
    }
    if (!pass_filters(pid_tgid))
        return 0;
    u32 zero = 0;
    struct pending_t *p = pending_scratch.lookup(&zero);
    if (!p)
        return 0;
    p->sock_seen = 0;
    take_args(p, sc, &r);
    if (ret > 0)
        sock_from_fd(p);
    on_exit(p, ret);
#endif
    return 0;
}

// ---- sockets coming into existence: learn the type (for connect events) ----
TRACEPOINT_PROBE(syscalls, sys_enter_socket) {
    u32 fam = args->family;
    if (fam != AF_INET && fam != AF_INET6)
        return 0;
    u64 pid_tgid = bpf_get_current_pid_tgid();
    struct sock_args_t sa = {fam, (u32)args->type & 0xf};
    socket_args.update(&pid_tgid, &sa);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_socket) {
    u64 pid_tgid = bpf_get_current_pid_tgid();
    struct sock_args_t *sa = socket_args.lookup(&pid_tgid);
    if (!sa)
        return 0;
    if (args->ret >= 0) {
        u64 key = (pid_tgid & 0xffffffff00000000ULL) | (u32)args->ret;
        struct fd_state_t st = {FD_SOCKET, (u8)sa->type};
        fd_state.update(&key, &st);
    }
    socket_args.delete(&pid_tgid);
    return 0;
}
#if !SOCK_TP
// Without the sock tracepoints, read/write on an accepted socket are only looked at once the
// socket is known: an accepted socket is a candidate until its first I/O classifies it.
static __always_inline void on_accept(long ret) {
    if (ret < 0)
        return;
    u64 pid_tgid = bpf_get_current_pid_tgid();
    if (!pass_filters(pid_tgid))
        return;
    u64 key = (pid_tgid & 0xffffffff00000000ULL) | (u32)ret;
    struct fd_state_t st = {FD_CANDIDATE, T_STREAM};
    fd_state.update(&key, &st);
}
TRACEPOINT_PROBE(syscalls, sys_exit_accept) { on_accept(args->ret); return 0; }
TRACEPOINT_PROBE(syscalls, sys_exit_accept4) { on_accept(args->ret); return 0; }
#endif
// ---- connect() ----
TRACEPOINT_PROBE(syscalls, sys_enter_connect) {
    u64 pid_tgid = bpf_get_current_pid_tgid();
    if (!pass_filters(pid_tgid))
        return 0;
    struct conn_t c = {};
    c.family = read_sockaddr((u64)args->uservaddr, c.addr, &c.port);
    if (!c.family)
        return 0;
    c.ts = bpf_ktime_get_ns();
    c.fd = args->fd;
    if (conn_pending.update(&pid_tgid, &c) != 0)
        count_lost(LOST_CONNECT_PENDING_FULL, 1);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_connect) {
    u64 pid_tgid = bpf_get_current_pid_tgid();
    struct conn_t *c = conn_pending.lookup(&pid_tgid);
    if (!c)
        return 0;
    u64 key = (pid_tgid & 0xffffffff00000000ULL) | (u32)c->fd;
    struct fd_state_t *st = fd_state.lookup(&key);
    u8 type = st ? st->type : 0;
#if !SOCK_TP
    if (port_match(c->port)) {  // Go: connect() then write()/read()
        struct fd_state_t nst = {FD_DNS, type};
        fd_state.update(&key, &nst);
    }
#endif
#if TRACE_CONNECTS
    struct ev_connect ev = {};
    fill_common(&ev.c, KIND_CONNECT);
    ev.c.family = c->family;
    ev.c.protocol = type == T_STREAM ? 6 : (type == T_DGRAM ? 17 : 0);
    ev.c.flags = F_DST_ADDR | F_DST_PORT | (ev.c.protocol ? F_PROTO : 0);
    __builtin_memcpy(ev.dst_addr, c->addr, 16);
    ev.dst_port = c->port;
    ev.fd = c->fd;
    ev.result = args->ret;
    ev.latency_ns = ev.c.mono_ns - c->ts;
    ring_write(&ev, sizeof(ev));
#endif
    conn_pending.delete(&pid_tgid);
    return 0;
}

// ---- exec ----
#if TRACE_EXECS
TRACEPOINT_PROBE(sched, sched_process_exec) {
    u64 pid_tgid = bpf_get_current_pid_tgid();
    if (!pass_filters(pid_tgid))
        return 0;
    u32 zero = 0;
    struct ev_msg *buf = scratch.lookup(&zero);
    if (!buf)
        return 0;
    struct ev_exec *ev = (struct ev_exec *)buf;
    fill_common(&ev->c, KIND_EXEC);
    u64 task = (u64)bpf_get_current_task();
    u64 parent = 0;
    u32 ppid = 0;
    bpf_probe_read_kernel(&parent, sizeof(parent), (void *)(task + OFF_TASK_REAL_PARENT));
    if (parent)
        bpf_probe_read_kernel(&ppid, sizeof(ppid), (void *)(parent + OFF_TASK_TGID));
    ev->ppid = ppid;
    ev->_pad = 0;
    __builtin_memset(ev->filename, 0, sizeof(ev->filename));
    TP_DATA_LOC_READ_STR(ev->filename, filename, sizeof(ev->filename));
    ring_write(ev, sizeof(*ev));
    return 0;
}
#endif
