// uring_dns SERVER MODE: DNS over UDP through io_uring (raw syscalls, no liburing), for the
// probe's untracked_socket_io accounting (tests/test_probe_preexisting.py).
//   async: two rounds of IORING_OP_SENDMSG + IORING_OP_RECVMSG with IOSQE_ASYNC, which makes
//          io_uring run them in an io-wq worker thread (a thread that never makes a syscall)
//   batch: three IORING_OP_SENDMSG submitted by one io_uring_enter and run inline in it
// Prints "ok N" with the number of messages moved; exit status 1 on any failure.
#include <arpa/inet.h>
#include <linux/io_uring.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static struct io_uring_params p;
static struct io_uring_sqe *sqes;
static unsigned *sq_tail, *sq_mask, *sq_array, *cq_head, *cq_tail, *cq_mask;
static struct io_uring_cqe *cqes;
static int ring;

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void setup(void) {
    ring = (int)syscall(__NR_io_uring_setup, 8, &p);
    if (ring < 0)
        die("io_uring_setup");
    size_t sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    char *sq = mmap(0, sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring,
                    IORING_OFF_SQ_RING);
    char *cq = mmap(0, cq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring,
                    IORING_OFF_CQ_RING);
    sqes = mmap(0, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
                MAP_SHARED | MAP_POPULATE, ring, IORING_OFF_SQES);
    if (sq == MAP_FAILED || cq == MAP_FAILED || sqes == MAP_FAILED)
        die("mmap");
    sq_tail = (unsigned *)(sq + p.sq_off.tail);
    sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
    sq_array = (unsigned *)(sq + p.sq_off.array);
    cq_head = (unsigned *)(cq + p.cq_off.head);
    cq_tail = (unsigned *)(cq + p.cq_off.tail);
    cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
    cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
}

static void queue(int op, int fd, struct msghdr *msg, unsigned flags) {
    unsigned tail = *sq_tail, idx = tail & *sq_mask;
    struct io_uring_sqe *sqe = &sqes[idx];
    memset(sqe, 0, sizeof(*sqe));
    sqe->opcode = (unsigned char)op;
    sqe->fd = fd;
    sqe->addr = (unsigned long)msg;
    sqe->len = 1;
    sqe->flags = (unsigned char)flags;
    sq_array[idx] = idx;
    __atomic_store_n(sq_tail, tail + 1, __ATOMIC_RELEASE);
}

// Submit what is queued and wait for `n` completions; returns how many succeeded.
static int submit_wait(unsigned n) {
    if (syscall(__NR_io_uring_enter, ring, n, n, IORING_ENTER_GETEVENTS, NULL, 0) < 0)
        die("io_uring_enter");
    int ok = 0;
    for (unsigned got = 0; got < n;) {
        unsigned head = *cq_head;
        if (head == __atomic_load_n(cq_tail, __ATOMIC_ACQUIRE)) {
            if (syscall(__NR_io_uring_enter, ring, 0, 1, IORING_ENTER_GETEVENTS, NULL, 0) < 0)
                die("io_uring_enter");
            continue;
        }
        struct io_uring_cqe *cqe = &cqes[head & *cq_mask];
        if (cqe->res > 0)
            ok++;
        else
            fprintf(stderr, "op failed: %d\n", cqe->res);
        __atomic_store_n(cq_head, head + 1, __ATOMIC_RELEASE);
        got++;
    }
    return ok;
}

int main(int argc, char **argv) {
    if (argc != 3)
        return 2;
    struct sockaddr_in srv = {.sin_family = AF_INET, .sin_port = htons(53)};
    if (inet_pton(AF_INET, argv[1], &srv.sin_addr) != 1)
        return 2;
    // connected, as glibc's stub resolver does: the socket itself has the DNS port, which is
    // all the probe can go by for I/O it does not read
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&srv, sizeof(srv)) < 0)
        die("socket/connect");
    // A query for www.lab.test A, id 0x5151
    unsigned char q[] = {0x51, 0x51, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0,
                         3, 'w', 'w', 'w', 3, 'l', 'a', 'b', 4, 't', 'e', 's', 't', 0, 0, 1, 0, 1};
    unsigned char answer[3][512];
    struct iovec qv = {q, sizeof(q)}, av[3];
    struct msghdr send = {.msg_iov = &qv, .msg_iovlen = 1};
    struct msghdr recv[3];
    for (int i = 0; i < 3; i++) {
        av[i] = (struct iovec){answer[i], sizeof(answer[i])};
        recv[i] = (struct msghdr){.msg_iov = &av[i], .msg_iovlen = 1};
    }
    setup();
    int moved = 0;
    if (strcmp(argv[2], "async") == 0) {
        for (int round = 0; round < 2; round++) {
            queue(IORING_OP_SENDMSG, fd, &send, IOSQE_ASYNC);
            moved += submit_wait(1);
            struct timespec pause = {0, 200 * 1000 * 1000};  // the answer is there before
            nanosleep(&pause, NULL);                        // the worker reads
            queue(IORING_OP_RECVMSG, fd, &recv[round], IOSQE_ASYNC);
            moved += submit_wait(1);
        }
        if (moved != 4)
            return 1;
    } else if (strcmp(argv[2], "batch") == 0) {
        for (int i = 0; i < 3; i++)
            queue(IORING_OP_SENDMSG, fd, &send, 0);
        moved = submit_wait(3);
        if (moved != 3)
            return 1;
    } else {
        return 2;
    }
    printf("ok %d\n", moved);
    return 0;
}
