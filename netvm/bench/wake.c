/* wake: how long a blocked reader of a packet socket takes to run after the kernel
 * received a frame, on this host: the floor under any driver that sleeps in the kernel
 * until a frame comes (netvm_driver and baseline.c both do).
 *
 * usage: wake IFNAME COUNT TIMEOUT_S
 * Blocks in recvmsg() on a packet socket bound to IFNAME with SO_TIMESTAMPNS and, for
 * each of COUNT incoming frames (outgoing ones are skipped), takes CLOCK_REALTIME as
 * soon as recvmsg() returns, minus the frame's kernel receive timestamp. Prints one JSON
 * object: {"count", "p50_us", "p99_us", "min_us", "max_us"}; stops early after TIMEOUT_S
 * seconds without a frame. The bench pins it to the driver's CPU. */
#include <arpa/inet.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

static int by_value(const void *a, const void *b)
{
    long x = *(const long *)a, y = *(const long *)b;
    return (x > y) - (x < y);
}

static double us_at(const long *v, int n, int permille)
{
    int i = (int)((long)n * permille / 1000);
    return v[i < n ? i : n - 1] / 1000.0;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: wake IFNAME COUNT TIMEOUT_S\n");
        return 2;
    }
    int want = atoi(argv[2]), timeout = atoi(argv[3]);
    unsigned idx = if_nametoindex(argv[1]);
    if (want < 1 || timeout < 1 || !idx) {
        fprintf(stderr, "wake: bad arguments (interface %s)\n", argv[1]);
        return 2;
    }
    int s = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
    struct sockaddr_ll sll = {.sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL),
                              .sll_ifindex = (int)idx};
    int one = 1;
    struct timeval tv = {.tv_sec = timeout};
    if (s < 0 || bind(s, (struct sockaddr *)&sll, sizeof sll) ||
        setsockopt(s, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one) ||
        setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv)) {
        perror("wake: socket");
        return 1;
    }
    long *lat = calloc((size_t)want, sizeof *lat);
    char frame[2048], control[256];
    int n = 0;
    while (n < want && lat) {
        struct sockaddr_ll from;
        struct iovec iov = {.iov_base = frame, .iov_len = sizeof frame};
        struct msghdr m = {.msg_name = &from, .msg_namelen = sizeof from, .msg_iov = &iov,
                           .msg_iovlen = 1, .msg_control = control,
                           .msg_controllen = sizeof control};
        ssize_t got = recvmsg(s, &m, 0);
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        if (got < 0)
            break; /* the timeout: no more frames */
        if (from.sll_pkttype == PACKET_OUTGOING)
            continue;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SO_TIMESTAMPNS) {
                struct timespec t;
                memcpy(&t, CMSG_DATA(c), sizeof t);
                lat[n++] = (now.tv_sec - t.tv_sec) * 1000000000L + (now.tv_nsec - t.tv_nsec);
            }
        }
    }
    if (!n) {
        printf("{\"count\": 0, \"p50_us\": null, \"p99_us\": null, \"min_us\": null, "
               "\"max_us\": null}\n");
        return 0;
    }
    qsort(lat, (size_t)n, sizeof *lat, by_value);
    printf("{\"count\": %d, \"p50_us\": %.1f, \"p99_us\": %.1f, \"min_us\": %.1f, "
           "\"max_us\": %.1f}\n",
           n, us_at(lat, n, 500), us_at(lat, n, 990), lat[0] / 1000.0, lat[n - 1] / 1000.0);
    return 0;
}
