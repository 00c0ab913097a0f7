/* The recorder's hot path: move committed BPF ring buffer records into a spool file.
 *
 * Built by `pip install` as a plain shared library (no Python API) and called through ctypes
 * (capture/spool.py), which releases the GIL for the call. One call walks the ring from the
 * consumer position up to the producer position (or the first record still being written),
 * writes every message record, cut to its header and captured payload, into the spool file in
 * large sequential writes, copies the other records (connects, execs: rare) into a side buffer
 * for the caller to parse at once, and only then moves the consumer position on: a record leaves
 * the ring only after it is in the file (or the side buffer).
 *
 * Spool record layout (also the side buffer's): u32 length of the content, u32 zero, the content
 * (the ring record's first `length` bytes), zero padding to a multiple of 8. docs/format.md.
 *
 * Everything here reads memory the kernel writes concurrently: the positions and headers are
 * read with acquire loads and the consumer position is stored with a release store, as libbpf's
 * ringbuf consumer does. Lengths from the ring are bounded by the ring size before use.
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#define RB_BUSY (1u << 31)
#define RB_DISCARD (1u << 30)
#define RB_LEN ((1u << 30) - 1)
#define RB_HDR 8u
#define KIND_MSG 1

struct dnstrail_drain {
    uint64_t records;      /* records consumed (spooled + side), discarded ones not counted */
    uint64_t messages;     /* of them, message records written to the spool */
    uint64_t spool_bytes;  /* bytes appended to the spool file */
    uint64_t side_bytes;   /* bytes written to the side buffer */
    uint64_t ring_bytes;   /* bytes the consumer position moved on */
    uint64_t payload_bytes;/* captured payload bytes of the spooled messages */
    int64_t error;         /* 0, or the errno of a failed write (nothing consumed past it) */
};

static inline uint64_t load_acq64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline uint32_t load_acq32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }

/* n bytes at ring offset off (which may wrap past the end of the ring) into dst */
static void ring_copy(uint8_t *dst, const uint8_t *data, uint64_t mask, uint64_t off, uint64_t n) {
    uint64_t size = mask + 1;
    off &= mask;
    uint64_t first = size - off;
    if (n <= first) {
        memcpy(dst, data + off, n);
    } else {
        memcpy(dst, data + off, first);
        memcpy(dst + first, data, n - first);
    }
}

/* write n bytes; *done = bytes written (all of them unless an errno is returned) */
static int write_all(int fd, const uint8_t *buf, uint64_t n, uint64_t *done) {
    *done = 0;
    while (*done < n) {
        ssize_t w = write(fd, buf + *done, n - *done);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        if (w == 0)
            return EIO;
        *done += (uint64_t)w;
    }
    return 0;
}

struct progress {
    uint64_t cons, side, records, messages, payload;
};

/* A write failed after `written` bytes of the staged records: walk the ring again from p->cons
 * (where the staged records begin) and move p past every record that is now whole in the file
 * (and the side records and discards between them). Returns the staged bytes kept. */
static uint64_t keep_written(const uint8_t *data, uint64_t mask, uint64_t end, const uint8_t *buf,
                             uint64_t written, uint32_t msg_hdr, struct progress *p) {
    uint64_t off = 0, cons = p->cons;
    while (cons < end) {
        uint32_t hdr = load_acq32((const uint32_t *)(data + (cons & mask)));
        uint64_t len = hdr & RB_LEN;
        uint64_t stride = (len + RB_HDR + 7) & ~7ull;
        if (!(hdr & RB_DISCARD)) {
            uint8_t kind = data[(cons + RB_HDR) & mask];
            if (kind == KIND_MSG && len >= msg_hdr) {
                uint32_t keep;
                memcpy(&keep, buf + off, 4);
                uint64_t need = ((uint64_t)keep + RB_HDR + 7) & ~7ull;
                if (off + need > written)
                    break;
                off += need;
                p->messages++;
                p->payload += keep - msg_hdr;
            } else {
                p->side += (len + RB_HDR + 7) & ~7ull;
            }
            p->records++;
        }
        cons += stride;
    }
    p->cons = cons;
    return off;
}

/* Drain one ring. data: the ring's data area (size = mask + 1 bytes, mapped once); cons/prod:
 * the consumer and producer position words. spool_fd: the spool file, opened O_APPEND; buf:
 * a staging buffer of bufsize bytes (>= 64 KiB); side: the side buffer. msg_hdr: the size of
 * a message record's fixed header (its cap_len is the u32 just before the payload); snaplen:
 * the largest payload kept. At most max_records records are consumed. */
int dnstrail_spool_drain(const uint8_t *data, uint64_t mask, uint64_t *cons_pos,
                         const uint64_t *prod_pos, int spool_fd, uint8_t *buf, uint64_t bufsize,
                         uint8_t *side, uint64_t sidesize, uint32_t msg_hdr, uint32_t snaplen,
                         uint64_t max_records, struct dnstrail_drain *out) {
    memset(out, 0, sizeof(*out));
    uint64_t cons = load_acq64(cons_pos);
    uint64_t start = cons;
    uint64_t prod = load_acq64(prod_pos);
    uint64_t fill = 0, side_fill = 0;
    /* what is safely out of the ring: records before done.cons are in the file or the side
     * buffer; a failed write keeps the records it did write whole and leaves the rest in the
     * ring */
    struct progress done = {cons, 0, 0, 0, 0}, now = {cons, 0, 0, 0, 0};
    uint64_t size = mask + 1;
    if (prod - cons > size) /* a producer position we cannot make sense of: read nothing */
        return -1;
    while (cons < prod && now.records < max_records) {
        uint32_t hdr = load_acq32((const uint32_t *)(data + (cons & mask)));
        if (hdr & RB_BUSY)
            break;
        uint64_t len = hdr & RB_LEN;
        uint64_t stride = (len + RB_HDR + 7) & ~7ull;
        if (stride > prod - cons) /* cannot be: stop rather than read past the producer */
            break;
        if (hdr & RB_DISCARD) {
            cons += stride;
            continue;
        }
        uint8_t kind = data[(cons + RB_HDR) & mask];
        if (kind == KIND_MSG && len >= msg_hdr) {
            uint32_t cap;
            ring_copy((uint8_t *)&cap, data, mask, cons + RB_HDR + msg_hdr - 4, 4);
            if (cap > snaplen)
                cap = snaplen;
            if (cap > len - msg_hdr)
                cap = (uint32_t)(len - msg_hdr);
            uint64_t keep = msg_hdr + cap;
            uint64_t need = (keep + RB_HDR + 7) & ~7ull;
            if (need > bufsize)
                break; /* cannot be with bufsize >= 64 KiB */
            if (fill + need > bufsize) {
                uint64_t wrote;
                int err = write_all(spool_fd, buf, fill, &wrote);
                if (err) {
                    out->error = err;
                    out->spool_bytes += keep_written(data, mask, cons, buf, wrote, msg_hdr,
                                                     &done);
                    break;
                }
                out->spool_bytes += fill;
                fill = 0;
                now.cons = cons;
                now.side = side_fill;
                done = now;
            }
            uint32_t h[2] = {(uint32_t)keep, 0};
            memcpy(buf + fill, h, 8);
            ring_copy(buf + fill + 8, data, mask, cons + RB_HDR, keep);
            memset(buf + fill + 8 + keep, 0, need - 8 - keep);
            fill += need;
            now.messages++;
            now.payload += cap;
        } else {
            uint64_t need = (len + RB_HDR + 7) & ~7ull;
            if (side_fill + need > sidesize)
                break; /* the caller parses the side buffer and calls again */
            uint32_t h[2] = {(uint32_t)len, 0};
            memcpy(side + side_fill, h, 8);
            ring_copy(side + side_fill + 8, data, mask, cons + RB_HDR, len);
            memset(side + side_fill + 8 + len, 0, need - 8 - len);
            side_fill += need;
        }
        now.records++;
        cons += stride;
    }
    if (!out->error) {
        uint64_t wrote = 0;
        int err = fill ? write_all(spool_fd, buf, fill, &wrote) : 0;
        if (err) {
            out->error = err;
            out->spool_bytes += keep_written(data, mask, cons, buf, wrote, msg_hdr, &done);
        } else {
            out->spool_bytes += fill;
            now.cons = cons;
            now.side = side_fill;
            done = now;
        }
    }
    out->records = done.records;
    out->messages = done.messages;
    out->payload_bytes = done.payload;
    out->side_bytes = done.side;
    out->ring_bytes = done.cons - start;
    if (done.cons != start)
        __atomic_store_n(cons_pos, done.cons, __ATOMIC_RELEASE);
    return 0;
}

/* Committed records waiting in a ring (what a capture that must stop leaves behind). */
uint64_t dnstrail_ring_pending(const uint8_t *data, uint64_t mask, const uint64_t *cons_pos,
                               const uint64_t *prod_pos) {
    uint64_t cons = load_acq64(cons_pos), prod = load_acq64(prod_pos), n = 0;
    if (prod - cons > mask + 1)
        return 0;
    while (cons < prod) {
        uint32_t hdr = load_acq32((const uint32_t *)(data + (cons & mask)));
        if (hdr & RB_BUSY)
            break;
        uint64_t len = hdr & RB_LEN;
        uint64_t stride = (len + RB_HDR + 7) & ~7ull;
        if (stride > prod - cons)
            break;
        if (!(hdr & RB_DISCARD))
            n++;
        cons += stride;
    }
    return n;
}

/* Index spool records: offsets of the record contents and their lengths, for the records that
 * lie wholly within buf[0:n]. Returns the number found (at most max) and sets *used to the
 * bytes they span: a partial record at the end (a killed recorder's last write) is left. */
uint64_t dnstrail_spool_index(const uint8_t *buf, uint64_t n, int64_t *starts, int64_t *lens,
                              uint64_t max, uint64_t *used) {
    uint64_t pos = 0, k = 0;
    while (k < max && pos + RB_HDR <= n) {
        uint32_t len;
        memcpy(&len, buf + pos, 4);
        uint64_t stride = ((uint64_t)len + RB_HDR + 7) & ~7ull;
        if (len == 0 || stride > n - pos)
            break;
        starts[k] = (int64_t)(pos + RB_HDR);
        lens[k] = len;
        k++;
        pos += stride;
    }
    *used = pos;
    return k;
}
