/* resolve: a tiny getaddrinfo() client, built static with musl-gcc for the dnstrail lab.
 *
 *   resolve [-n ROUNDS] [-i INTERVAL_MS] [--connect PORT] [--family 4|6|any] NAME...
 *
 * Resolves every NAME ROUNDS times (default 1), sleeping INTERVAL_MS between rounds, and
 * prints one line per address: "NAME ADDRESS", or "NAME ERROR <gai_strerror>" on failure.
 * With --connect PORT it then TCP-connects to the first address of the first name that
 * resolved and prints "CONNECT ADDRESS PORT ok" or "CONNECT ADDRESS PORT error <strerror>".
 * Exit status: 0 when every lookup (and the connect) succeeded, 2 otherwise, 64 on bad usage.
 * Every loop is bounded: ROUNDS <= 100000, at most 64 names, at most 64 addresses printed.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define MAX_NAMES 64
#define MAX_ADDRS 64
#define MAX_ROUNDS 100000

static void usage(void) {
    fprintf(stderr, "usage: resolve [-n ROUNDS] [-i INTERVAL_MS] [--connect PORT] "
                    "[--family 4|6|any] NAME...\n");
    exit(64);
}

static void sleep_ms(long ms) {
    struct timespec ts;
    if (ms <= 0) return;
    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (ms % 1000) * 1000000L;
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static int do_connect(const struct sockaddr_storage *ss, socklen_t len, int port) {
    char host[INET6_ADDRSTRLEN] = "?";
    struct sockaddr_storage a = *ss;
    int fd, rc;
    struct timeval tv = {3, 0};
    if (a.ss_family == AF_INET) {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&a;
        s4->sin_port = htons((unsigned short)port);
        inet_ntop(AF_INET, &s4->sin_addr, host, sizeof host);
    } else {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&a;
        s6->sin6_port = htons((unsigned short)port);
        inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof host);
    }
    fd = socket(a.ss_family, SOCK_STREAM, 0);
    if (fd < 0) {
        printf("CONNECT %s %d error %s\n", host, port, strerror(errno));
        return 2;
    }
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    rc = connect(fd, (struct sockaddr *)&a, len);
    if (rc == 0) {
        printf("CONNECT %s %d ok\n", host, port);
    } else {
        printf("CONNECT %s %d error %s\n", host, port, strerror(errno));
    }
    close(fd);
    return rc == 0 ? 0 : 2;
}

int main(int argc, char **argv) {
    const char *names[MAX_NAMES];
    int n_names = 0, rounds = 1, port = -1, family = AF_UNSPEC, status = 0;
    long interval_ms = 0;
    struct sockaddr_storage first;
    socklen_t first_len = 0;

    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-n") && i + 1 < argc) {
            rounds = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "-i") && i + 1 < argc) {
            interval_ms = atol(argv[++i]);
        } else if (!strcmp(argv[i], "--connect") && i + 1 < argc) {
            port = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--no-cache")) {
            /* musl has no resolver cache: accepted for symmetry with other clients */
        } else if (!strcmp(argv[i], "--family") && i + 1 < argc) {
            const char *f = argv[++i];
            family = !strcmp(f, "4") ? AF_INET : !strcmp(f, "6") ? AF_INET6 : AF_UNSPEC;
        } else if (argv[i][0] == '-') {
            usage();
        } else if (n_names < MAX_NAMES) {
            names[n_names++] = argv[i];
        } else {
            usage();
        }
    }
    if (n_names == 0 || rounds < 1 || rounds > MAX_ROUNDS || interval_ms < 0 ||
        (port != -1 && (port < 1 || port > 65535)))
        usage();

    for (int r = 0; r < rounds; r++) {
        if (r > 0) sleep_ms(interval_ms);
        for (int k = 0; k < n_names; k++) {
            struct addrinfo hints, *res = NULL, *ai;
            int rc, printed = 0;
            memset(&hints, 0, sizeof hints);
            hints.ai_family = family;
            hints.ai_socktype = SOCK_STREAM;
            rc = getaddrinfo(names[k], NULL, &hints, &res);
            if (rc != 0) {
                printf("%s ERROR %s\n", names[k], gai_strerror(rc));
                status = 2;
                continue;
            }
            for (ai = res; ai && printed < MAX_ADDRS; ai = ai->ai_next, printed++) {
                char host[INET6_ADDRSTRLEN] = "?";
                if (ai->ai_family == AF_INET)
                    inet_ntop(AF_INET, &((struct sockaddr_in *)ai->ai_addr)->sin_addr, host,
                              sizeof host);
                else if (ai->ai_family == AF_INET6)
                    inet_ntop(AF_INET6, &((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr, host,
                              sizeof host);
                printf("%s %s\n", names[k], host);
                if (first_len == 0 && ai->ai_addrlen <= sizeof first) {
                    memcpy(&first, ai->ai_addr, ai->ai_addrlen);
                    first_len = ai->ai_addrlen;
                }
            }
            freeaddrinfo(res);
        }
        fflush(stdout);
    }
    if (port != -1) {
        if (first_len == 0) {
            printf("CONNECT - %d error no address\n", port);
            status = 2;
        } else if (do_connect(&first, first_len, port) != 0) {
            status = 2;
        }
    }
    fflush(stdout);
    return status;
}
