/* cforward: the C baseline of the LevelChat forwarding bench.
 *
 * One UDP socket on 127.0.0.1.  recvmmsg batches; each packet gets one srtp_unprotect, then for
 * each of N destinations a copy, an srtp_protect with that destination's own outbound session and
 * key, and a slot in one sendmmsg batch.  libsrtp is NOT linked: the functions are dlsym'd from the
 * pylibsrtp extension (which bundles libsrtp 2.x statically), so C and Python run the same crypto.
 * srtp_policy_t is opaque here; its size and field offsets come in as -DPOL_* from pylibsrtp's cdef.
 *
 * usage: cforward --lib SO --port P --in-key HEX --dest PORT:HEX [--dest ...]
 *                 [--seconds S] [--max-packets N] [--idle-ms M] [--batch B]
 * Prints "READY <port>" once listening, and one JSON line of stats when it stops: after S seconds,
 * N received packets, M ms without traffic (once traffic started), or SIGTERM/SIGINT.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef POL_SIZE
#error "build with the -DPOL_* flags from bench/cbuild.py"
#endif

#define KEY_LEN 30
#define SLOT 1644 /* 1500 + SRTP trailer room, as bench/srtpkit.py SLOT_SIZE */
#define MAX_DESTS 64
#define MAX_BATCH 64
#define MAX_OUT 1024

typedef void *srtp_t;
typedef int (*fn_init)(void);
typedef int (*fn_create)(srtp_t *, const void *);
typedef int (*fn_protect)(srtp_t, void *, int *);
typedef int (*fn_policy)(void *, int);
typedef int (*fn_dealloc)(srtp_t);

static fn_init p_init;
static fn_create p_create;
static fn_protect p_protect, p_unprotect;
static fn_policy p_policy_rtp, p_policy_rtcp;
static fn_dealloc p_dealloc;

static volatile sig_atomic_t stop_flag = 0;
static void on_signal(int sig) { (void)sig; stop_flag = 1; }

static void die(const char *what) {
    fprintf(stderr, "cforward: %s\n", what);
    exit(2);
}

static void *sym(void *h, const char *name) {
    void *p = dlsym(h, name);
    if (!p) {
        fprintf(stderr, "cforward: symbol %s missing: %s\n", name, dlerror());
        exit(2);
    }
    return p;
}

static void parse_key(const char *hex, unsigned char *out) {
    if (strlen(hex) != 2 * KEY_LEN) die("key must be 60 hex digits");
    for (int i = 0; i < KEY_LEN; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1) die("key is not hex");
        out[i] = (unsigned char)v;
    }
}

static srtp_t make_session(unsigned char *key, int outbound) {
    _Alignas(16) unsigned char policy[POL_SIZE];
    memset(policy, 0, sizeof policy);
    if (p_policy_rtp(policy + POL_RTP, POL_PROFILE_AES128_CM_SHA1_80) != 0) die("policy rtp");
    if (p_policy_rtcp(policy + POL_RTCP, POL_PROFILE_AES128_CM_SHA1_80) != 0) die("policy rtcp");
    int type = outbound ? POL_SSRC_ANY_OUTBOUND : POL_SSRC_ANY_INBOUND;
    memcpy(policy + POL_SSRC_TYPE, &type, sizeof type);
    memcpy(policy + POL_KEY, &key, sizeof key);
    unsigned long window = 1024;
    memcpy(policy + POL_WINDOW_SIZE, &window, sizeof window);
    srtp_t s = NULL;
    if (p_create(&s, policy) != 0) die("srtp_create failed");
    return s;
}

static double now_s(clockid_t c) {
    struct timespec ts;
    clock_gettime(c, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    const char *lib = NULL, *in_key_hex = NULL;
    int port = 0, ndest = 0, batch = 32;
    double seconds = 10.0;
    long long max_packets = 0, idle_ms = 0;
    int dest_port[MAX_DESTS];
    unsigned char dest_key[MAX_DESTS][KEY_LEN];

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc) die("option without value");
        const char *v = argv[++i];
        if (!strcmp(a, "--lib")) lib = v;
        else if (!strcmp(a, "--port")) port = atoi(v);
        else if (!strcmp(a, "--in-key")) in_key_hex = v;
        else if (!strcmp(a, "--seconds")) seconds = atof(v);
        else if (!strcmp(a, "--max-packets")) max_packets = atoll(v);
        else if (!strcmp(a, "--idle-ms")) idle_ms = atoll(v);
        else if (!strcmp(a, "--batch")) batch = atoi(v);
        else if (!strcmp(a, "--dest")) {
            if (ndest >= MAX_DESTS) die("too many destinations");
            const char *colon = strchr(v, ':');
            if (!colon) die("--dest wants PORT:KEYHEX");
            dest_port[ndest] = atoi(v);
            parse_key(colon + 1, dest_key[ndest]);
            ndest++;
        } else die("unknown option");
    }
    if (!lib || !in_key_hex || ndest == 0) die("need --lib, --in-key and at least one --dest");
    if (batch < 1 || batch > MAX_BATCH) die("batch must be 1..64");
    if (batch * ndest > MAX_OUT) batch = MAX_OUT / ndest;
    if (seconds <= 0 || seconds > 3600) die("seconds must be in (0, 3600]");

    void *h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
    if (!h) die(dlerror());
    p_init = (fn_init)sym(h, "srtp_init");
    p_create = (fn_create)sym(h, "srtp_create");
    p_protect = (fn_protect)sym(h, "srtp_protect");
    p_unprotect = (fn_protect)sym(h, "srtp_unprotect");
    p_policy_rtp = (fn_policy)sym(h, "srtp_crypto_policy_set_from_profile_for_rtp");
    p_policy_rtcp = (fn_policy)sym(h, "srtp_crypto_policy_set_from_profile_for_rtcp");
    p_dealloc = (fn_dealloc)sym(h, "srtp_dealloc");
    if (p_init() != 0) die("srtp_init failed");

    static unsigned char in_key[KEY_LEN];
    parse_key(in_key_hex, in_key);
    srtp_t in_sess = make_session(in_key, 0);
    srtp_t out_sess[MAX_DESTS];
    for (int d = 0; d < ndest; d++) out_sess[d] = make_session(dest_key[d], 1);

    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    if (fd < 0) die("socket");
    int buf = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0) die("bind");
    socklen_t alen = sizeof addr;
    getsockname(fd, (struct sockaddr *)&addr, &alen);

    struct sockaddr_in dests[MAX_DESTS];
    for (int d = 0; d < ndest; d++) {
        memset(&dests[d], 0, sizeof dests[d]);
        dests[d].sin_family = AF_INET;
        dests[d].sin_port = htons((uint16_t)dest_port[d]);
        dests[d].sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    }

    static unsigned char in_buf[MAX_BATCH][SLOT];
    static unsigned char out_buf[MAX_OUT][SLOT];
    static struct iovec in_iov[MAX_BATCH], out_iov[MAX_OUT];
    static struct mmsghdr in_msg[MAX_BATCH], out_msg[MAX_OUT];
    for (int i = 0; i < batch; i++) {
        in_iov[i].iov_base = in_buf[i];
        in_msg[i].msg_hdr.msg_iov = &in_iov[i];
        in_msg[i].msg_hdr.msg_iovlen = 1;
    }
    for (int k = 0; k < batch * ndest; k++) {
        out_iov[k].iov_base = out_buf[k];
        out_msg[k].msg_hdr.msg_iov = &out_iov[k];
        out_msg[k].msg_hdr.msg_iovlen = 1;
        out_msg[k].msg_hdr.msg_name = &dests[k % ndest];
        out_msg[k].msg_hdr.msg_namelen = sizeof dests[0];
    }

    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    printf("READY %d\n", ntohs(addr.sin_port));
    fflush(stdout);

    long long in_packets = 0, out_packets = 0, rejected = 0, refused = 0, batches = 0;
    double start = now_s(CLOCK_MONOTONIC), deadline = start + seconds, last_rx = 0;
    double cpu_first = -1, wall_first = 0;
    const char *reason = "seconds";
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    for (;;) {
        if (stop_flag) { reason = "signal"; break; }
        double now = now_s(CLOCK_MONOTONIC);
        if (now >= deadline) { reason = "seconds"; break; }
        if (max_packets > 0 && in_packets >= max_packets) { reason = "max_packets"; break; }
        if (idle_ms > 0 && last_rx > 0 && (now - last_rx) * 1000.0 >= (double)idle_ms) { reason = "idle"; break; }
        int pr = poll(&pfd, 1, 20);
        if (pr <= 0) continue;
        for (int round = 0; round < 8; round++) {
            for (int i = 0; i < batch; i++) in_iov[i].iov_len = SLOT;
            int n = recvmmsg(fd, in_msg, (unsigned)batch, MSG_DONTWAIT, NULL);
            if (n <= 0) break;
            if (cpu_first < 0) { cpu_first = now_s(CLOCK_PROCESS_CPUTIME_ID); wall_first = now_s(CLOCK_MONOTONIC); }
            batches++;
            in_packets += n;
            int k = 0;
            for (int i = 0; i < n; i++) {
                int len = (int)in_msg[i].msg_len;
                if (p_unprotect(in_sess, in_buf[i], &len) != 0) { rejected++; continue; }
                for (int d = 0; d < ndest; d++, k++) {
                    memcpy(out_buf[k], in_buf[i], (size_t)len);
                    int olen = len;
                    if (p_protect(out_sess[d], out_buf[k], &olen) != 0) die("srtp_protect failed");
                    out_iov[k].iov_len = (size_t)olen;
                }
            }
            int sent = 0, refused_here = 0;
            while (sent < k) {
                int r = sendmmsg(fd, out_msg + sent, (unsigned)(k - sent), 0);
                if (r <= 0) { refused_here++; sent++; continue; } /* drop what the kernel won't take */
                sent += r;
            }
            refused += refused_here;
            out_packets += k - refused_here;
            last_rx = now_s(CLOCK_MONOTONIC);
            if (n < batch) break;
        }
    }
    double cpu = now_s(CLOCK_PROCESS_CPUTIME_ID);
    double wall = now_s(CLOCK_MONOTONIC);
    printf("{\"target\": \"c\", \"in_packets\": %lld, \"out_packets\": %lld, \"rejected\": %lld, "
           "\"send_refused\": %lld, \"batches\": %lld, \"cpu_s_since_first_packet\": %.6f, "
           "\"wall_s_since_first_packet\": %.6f, \"stop_reason\": \"%s\", \"fanout\": %d}\n",
           in_packets, out_packets, rejected, refused, batches,
           cpu_first < 0 ? 0.0 : cpu - cpu_first, cpu_first < 0 ? 0.0 : wall - wall_first, reason, ndest);
    fflush(stdout);
    for (int d = 0; d < ndest; d++) p_dealloc(out_sess[d]);
    p_dealloc(in_sess);
    close(fd);
    return 0;
}
