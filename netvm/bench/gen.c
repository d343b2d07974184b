/*
 * netvm bench traffic generator: Ethernet frames from a TPACKET_V2 TX ring with
 * PACKET_QDISC_BYPASS, a batch of ring slots flushed by one send().
 *
 *   gen IFACE SIZE RATE SECONDS DST_MAC SRC_MAC [COUNT [BURST]]
 *
 * SIZE is the frame length without FCS (60..1514), RATE frames per second (0 = as fast
 * as possible), SECONDS how long to send at most, COUNT how many frames at most (0 or
 * absent: no limit), BURST how many frames each send() flushes (default: about 10k
 * flushes per second when paced, 64 when not; at most 64). A fixed COUNT in fixed
 * BURSTs is what the instruction counts under callgrind use: the driver then sees the
 * same batches whatever the load on the host (docs/bench.md). Frames carry ethertype 0x88b5 (local
 * experimental), a 64-bit sequence number and a fixed pattern. Prints one JSON line:
 * {"sent": N, "seconds": S, "rate": R, "send_errors": E}.
 *
 * Compiled by `invoke bench` with the host's gcc; part of the netvm benchmark.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define FRAME_SIZE 2048
#define BLOCK_SIZE (1 << 16)
#define BLOCK_NR 16
#define FRAME_NR (BLOCK_SIZE / FRAME_SIZE * BLOCK_NR)
#define DATA_OFF (TPACKET2_HDRLEN - sizeof(struct sockaddr_ll))
#define BENCH_ETHERTYPE 0x88b5

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int parse_mac(const char *s, uint8_t *mac)
{
    return sscanf(s, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &mac[0], &mac[1], &mac[2], &mac[3],
                  &mac[4], &mac[5]) == 6 ? 0 : -1;
}

int main(int argc, char **argv)
{
    if (argc < 7 || argc > 9) {
        fprintf(stderr, "usage: gen IFACE SIZE RATE SECONDS DST_MAC SRC_MAC [COUNT [BURST]]\n");
        return 2;
    }
    const char *ifname = argv[1];
    int size = atoi(argv[2]);
    double rate = atof(argv[3]);
    double seconds = atof(argv[4]);
    uint64_t count = argc > 7 ? strtoull(argv[7], NULL, 0) : 0;
    int burst = argc > 8 ? atoi(argv[8]) : 0;
    uint8_t dst[6], src[6];
    if (size < 60 || size > 1514 || seconds <= 0 || burst < 0 || burst > 64 ||
        parse_mac(argv[5], dst) || parse_mac(argv[6], src)) {
        fprintf(stderr, "gen: bad arguments\n");
        return 2;
    }

    int fd = socket(AF_PACKET, SOCK_RAW, 0);
    if (fd < 0) {
        perror("gen: socket");
        return 1;
    }
    int one = 1, v2 = TPACKET_V2;
    if (setsockopt(fd, SOL_PACKET, PACKET_VERSION, &v2, sizeof(v2)) ||
        setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof(one))) {
        perror("gen: setsockopt");
        return 1;
    }
    struct tpacket_req req = {BLOCK_SIZE, BLOCK_NR, FRAME_SIZE, FRAME_NR};
    if (setsockopt(fd, SOL_PACKET, PACKET_TX_RING, &req, sizeof(req))) {
        perror("gen: PACKET_TX_RING");
        return 1;
    }
    uint8_t *ring = mmap(NULL, (size_t)BLOCK_SIZE * BLOCK_NR, PROT_READ | PROT_WRITE,
                         MAP_SHARED, fd, 0);
    if (ring == MAP_FAILED) {
        perror("gen: mmap");
        return 1;
    }
    struct sockaddr_ll sll = {0};
    sll.sll_family = AF_PACKET;
    sll.sll_protocol = 0; /* send only: no receive hook */
    sll.sll_ifindex = if_nametoindex(ifname);
    if (!sll.sll_ifindex || bind(fd, (struct sockaddr *)&sll, sizeof(sll))) {
        perror("gen: bind");
        return 1;
    }

    /* Pre-format every slot; only the sequence number changes per frame. */
    for (int i = 0; i < FRAME_NR; i++) {
        uint8_t *f = ring + (size_t)i * FRAME_SIZE + DATA_OFF;
        memcpy(f, dst, 6);
        memcpy(f + 6, src, 6);
        f[12] = BENCH_ETHERTYPE >> 8;
        f[13] = BENCH_ETHERTYPE & 0xff;
        for (int k = 22; k < size; k++)
            f[k] = (uint8_t)(k * 7);
    }

    /* Pace in small batches: `batch` frames every `batch / rate` seconds. */
    int batch = 64;
    if (rate > 0) {
        batch = (int)(rate / 10000.0) + 1; /* ~10k flushes per second */
        if (batch > 64)
            batch = 64;
    }
    if (burst)
        batch = burst;
    double interval = rate > 0 ? batch / rate : 0;
    uint64_t sent = 0, errors = 0, seq = 0;
    unsigned slot = 0;
    double start = now(), next = start, end = start + seconds;
    struct timespec ts;
    for (;;) {
        double t = now();
        if (t >= end || (count && sent >= count))
            break;
        if (rate > 0 && t < next) {
            double wait = next - t;
            if (wait > 50e-6) {
                ts.tv_sec = 0;
                ts.tv_nsec = (long)((wait - 20e-6) * 1e9);
                nanosleep(&ts, NULL);
            }
            continue;
        }
        int queued = 0;
        int room = count && count - sent < (uint64_t)batch ? (int)(count - sent) : batch;
        for (int i = 0; i < room; i++) {
            struct tpacket2_hdr *h = (struct tpacket2_hdr *)(ring + (size_t)slot * FRAME_SIZE);
            if (h->tp_status & (TP_STATUS_SEND_REQUEST | TP_STATUS_SENDING))
                break; /* ring full: flush what we have */
            uint8_t *f = (uint8_t *)h + DATA_OFF;
            memcpy(f + 14, &seq, sizeof(seq));
            seq++;
            h->tp_len = (unsigned)size;
            __atomic_store_n(&h->tp_status, TP_STATUS_SEND_REQUEST, __ATOMIC_RELEASE);
            slot = (slot + 1) % FRAME_NR;
            queued++;
        }
        if (send(fd, NULL, 0, MSG_DONTWAIT) < 0 && errno != EAGAIN && errno != ENOBUFS)
            errors++;
        if (!queued) {
            struct pollfd p = {fd, POLLOUT, 0};
            poll(&p, 1, 1);
        }
        sent += queued;
        if (rate > 0) {
            next += interval;
            if (t - next > 0.01)
                next = t; /* fell behind by more than 10 ms: do not burst to catch up */
        }
    }
    /* Let the last slots go out. */
    for (int tries = 0; tries < 100; tries++) {
        send(fd, NULL, 0, MSG_DONTWAIT);
        int busy = 0;
        for (int i = 0; i < FRAME_NR; i++) {
            struct tpacket2_hdr *h = (struct tpacket2_hdr *)(ring + (size_t)i * FRAME_SIZE);
            busy |= h->tp_status & (TP_STATUS_SEND_REQUEST | TP_STATUS_SENDING);
        }
        if (!busy)
            break;
        usleep(1000);
    }
    double took = now() - start;
    printf("{\"sent\": %llu, \"seconds\": %.6f, \"rate\": %.1f, \"send_errors\": %llu}\n",
           (unsigned long long)sent, took, sent / took, (unsigned long long)errors);
    return 0;
}
