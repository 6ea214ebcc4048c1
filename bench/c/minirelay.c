/*
 * minirelay: the benchmark's reference relay, server and client, for the same two framings
 * wsnic-trio speaks: WebSocket (one binary message = one Ethernet frame) and the QEMU
 * stream format (4-byte big-endian length + frame).
 *
 * It is what userspace can do on this machine with the same wire format: one thread,
 * epoll, every ready TAP frame drained per wake-up and sent with one send(), every
 * complete frame parsed from one big recv(). It is a measuring stick, not a product:
 * no TLS, no fragmentation beyond what the benchmark's clients send, drops on a full TAP.
 *
 *   minirelay server ws|stream PORT BRIDGE MTU
 *       listen on 0.0.0.0:PORT (inside the benchmark's namespace); every connection gets
 *       a TAP "mrtap%d" with MTU, attached to the existing bridge BRIDGE and up.
 *   minirelay client ws|stream HOST PORT TAPNAME MTU
 *       create TAP TAPNAME (MTU, up), connect to HOST:PORT and relay until EOF.
 *
 * Build: gcc -O2 -Wall -Wextra -o minirelay minirelay.c -lcrypto
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <linux/sockios.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#define TAP_BATCH 64
#define RECV_CHUNK (256 * 1024)
#define MAX_EVENTS 256
#define HS_MAX 8192

enum { FRAMING_WS, FRAMING_STREAM };
enum { EP_LISTEN, EP_SOCK, EP_TAP };

struct conn;

struct ep {
    int kind;
    struct conn *c;
};

struct conn {
    int sock, tap;
    int framing;
    int server;  /* server side: receives masked frames, sends unmasked */
    int open;    /* WebSocket handshake done (always 1 for stream) */
    int tap_paused;
    int dead;
    struct conn *next_dead;
    unsigned char *in;
    size_t in_len, in_cap;
    unsigned char *out;
    size_t out_off, out_len, out_cap;
    uint64_t rng;
    char tapname[IFNAMSIZ];
    struct ep ep_sock, ep_tap;
};

static int g_epfd = -1;
static int g_mtu = 1500;
static int g_framing = FRAMING_WS;
static const char *g_bridge;
static int g_is_server;
static unsigned char *g_frame; /* scratch buffer for one TAP frame */

static void die(const char *what) {
    perror(what);
    exit(1);
}

static size_t max_frame(void) { return (size_t)g_mtu + 18; }

/* ---- TAP ------------------------------------------------------------------------ */

static int ifreq_ioctl(unsigned long req, struct ifreq *ifr) {
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return -1;
    int r = ioctl(s, req, ifr);
    int e = errno;
    close(s);
    errno = e;
    return r;
}

static int open_tap(const char *pattern, char *name_out) {
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) die("open /dev/net/tun");
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", pattern);
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) die("TUNSETIFF");
    snprintf(name_out, IFNAMSIZ, "%s", ifr.ifr_name);

    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name_out);
    ifr.ifr_mtu = g_mtu;
    if (ifreq_ioctl(SIOCSIFMTU, &ifr) < 0) die("SIOCSIFMTU");
    if (g_bridge) {
        memset(&ifr, 0, sizeof ifr);
        snprintf(ifr.ifr_name, IFNAMSIZ, "%s", g_bridge);
        ifr.ifr_ifindex = (int)if_nametoindex(name_out);
        if (ifreq_ioctl(SIOCBRADDIF, &ifr) < 0) die("SIOCBRADDIF");
    }
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name_out);
    if (ifreq_ioctl(SIOCGIFFLAGS, &ifr) < 0) die("SIOCGIFFLAGS");
    ifr.ifr_flags |= IFF_UP;
    if (ifreq_ioctl(SIOCSIFFLAGS, &ifr) < 0) die("SIOCSIFFLAGS");
    return fd;
}

/* ---- epoll helpers -------------------------------------------------------------- */

static void ep_ctl(int op, int fd, uint32_t events, struct ep *ep) {
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = events;
    ev.data.ptr = ep;
    if (epoll_ctl(g_epfd, op, fd, &ev) < 0) die("epoll_ctl");
}

static struct conn *g_dead; /* closed in this epoll round, freed after it */

static void conn_close(struct conn *c) {
    if (!g_is_server) exit(0);
    if (c->dead) return;
    c->dead = 1;
    epoll_ctl(g_epfd, EPOLL_CTL_DEL, c->sock, NULL);
    close(c->sock);
    if (c->tap >= 0) {
        epoll_ctl(g_epfd, EPOLL_CTL_DEL, c->tap, NULL);
        close(c->tap); /* the TAP is not persistent: the kernel deletes it */
    }
    c->next_dead = g_dead;
    g_dead = c;
}

static void free_dead(void) {
    while (g_dead) {
        struct conn *c = g_dead;
        g_dead = c->next_dead;
        free(c->in);
        free(c->out);
        free(c);
    }
}

/* ---- WebSocket bits --------------------------------------------------------------- */

static uint64_t xorshift(uint64_t *s) {
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static void xor_mask(unsigned char *dst, const unsigned char *src, size_t n, const unsigned char key[4]) {
    uint32_t k32;
    memcpy(&k32, key, 4);
    uint64_t k64 = ((uint64_t)k32 << 32) | k32;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v;
        memcpy(&v, src + i, 8);
        v ^= k64;
        memcpy(dst + i, &v, 8);
    }
    for (; i < n; i++) dst[i] = src[i] ^ key[i & 3];
}

/* Header for one binary (or control) message of len bytes; returns its size. */
static size_t ws_header(unsigned char *h, int opcode, size_t len, int masked, unsigned char key[4]) {
    size_t n = 0;
    h[n++] = (unsigned char)(0x80 | opcode);
    unsigned char m = masked ? 0x80 : 0;
    if (len < 126) {
        h[n++] = m | (unsigned char)len;
    } else if (len < 65536) {
        h[n++] = m | 126;
        h[n++] = (unsigned char)(len >> 8);
        h[n++] = (unsigned char)len;
    } else {
        h[n++] = m | 127;
        for (int i = 7; i >= 0; i--) h[n++] = (unsigned char)((uint64_t)len >> (8 * i));
    }
    if (masked) {
        memcpy(h + n, key, 4);
        n += 4;
    }
    return n;
}

/* Append one message to the output buffer (if it fits); payload is masked on the client. */
static int out_append(struct conn *c, int opcode, const unsigned char *p, size_t len) {
    size_t need = len + 14;
    if (c->out_len + need > c->out_cap) return -1;
    unsigned char *o = c->out + c->out_len;
    if (c->framing == FRAMING_STREAM) {
        uint32_t be = htonl((uint32_t)len);
        memcpy(o, &be, 4);
        memcpy(o + 4, p, len);
        c->out_len += 4 + len;
        return 0;
    }
    int masked = !c->server;
    unsigned char key[4];
    if (masked) {
        uint32_t k = (uint32_t)xorshift(&c->rng);
        memcpy(key, &k, 4);
    }
    size_t h = ws_header(o, opcode, len, masked, key);
    if (masked)
        xor_mask(o + h, p, len, key);
    else
        memcpy(o + h, p, len);
    c->out_len += h + len;
    return 0;
}

/* Send what is pending; returns 0 when all is out, 1 when the socket would block. */
static int flush_out(struct conn *c) {
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->sock, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 1;
            if (errno == EINTR) continue;
            return -1;
        }
        c->out_off += (size_t)n;
    }
    c->out_off = c->out_len = 0;
    return 0;
}

static void set_paused(struct conn *c, int paused) {
    if (c->tap < 0 || c->tap_paused == paused) return;
    c->tap_paused = paused;
    ep_ctl(EPOLL_CTL_MOD, c->tap, paused ? 0 : EPOLLIN, &c->ep_tap);
    ep_ctl(EPOLL_CTL_MOD, c->sock, paused ? (EPOLLIN | EPOLLOUT) : EPOLLIN, &c->ep_sock);
}

static int after_output(struct conn *c) {
    int r = flush_out(c);
    if (r < 0) return -1;
    set_paused(c, r == 1);
    return 0;
}

static void tap_write(struct conn *c, const unsigned char *p, size_t len) {
    if (c->tap < 0 || len < 14) return;
    /* A full TAP queue drops the frame, as Ethernet may. */
    if (write(c->tap, p, len) < 0 && errno != EAGAIN && errno != EINVAL) perror("write tap");
}

static void start_tap(struct conn *c) {
    char pattern[IFNAMSIZ];
    snprintf(pattern, sizeof pattern, "mrtap%%d");
    c->tap = open_tap(pattern, c->tapname);
    c->ep_tap.kind = EP_TAP;
    c->ep_tap.c = c;
    ep_ctl(EPOLL_CTL_ADD, c->tap, EPOLLIN, &c->ep_tap);
    printf("tap %s\n", c->tapname);
    fflush(stdout);
}

static const char WS_GUID[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/* Server handshake; returns 1 when done, 0 when more bytes are needed, -1 on error. */
static int ws_server_handshake(struct conn *c) {
    unsigned char *end = memmem(c->in, c->in_len, "\r\n\r\n", 4);
    if (!end) return c->in_len >= HS_MAX ? -1 : 0;
    size_t hlen = (size_t)(end - c->in) + 4;
    char head[HS_MAX + 1];
    memcpy(head, c->in, hlen);
    head[hlen] = 0;
    char *key = NULL;
    for (char *line = strstr(head, "\r\n"); line; line = strstr(line + 2, "\r\n")) {
        if (strncasecmp(line + 2, "Sec-WebSocket-Key:", 18) == 0) {
            key = line + 2 + 18;
            while (*key == ' ') key++;
            char *e = strstr(key, "\r\n");
            if (e) *e = 0;
            break;
        }
    }
    if (!key) return -1;
    char cat[256];
    snprintf(cat, sizeof cat, "%s%s", key, WS_GUID);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (!EVP_Digest(cat, strlen(cat), md, &mdlen, EVP_sha1(), NULL)) return -1;
    unsigned char accept[64];
    EVP_EncodeBlock(accept, md, (int)mdlen);
    char resp[512];
    int n = snprintf(resp, sizeof resp,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
                     accept);
    if (send(c->sock, resp, (size_t)n, MSG_NOSIGNAL) != n) return -1;
    memmove(c->in, c->in + hlen, c->in_len - hlen);
    c->in_len -= hlen;
    c->open = 1;
    start_tap(c);
    return 1;
}

/* Parse every complete frame in c->in; returns -1 to close the connection. */
static int parse_input(struct conn *c) {
    unsigned char *p = c->in;
    size_t avail = c->in_len, pos = 0;
    int want_flush = 0;
    while (1) {
        unsigned char *f = p + pos;
        size_t left = avail - pos;
        if (c->framing == FRAMING_STREAM) {
            if (left < 4) break;
            uint32_t be;
            memcpy(&be, f, 4);
            size_t len = ntohl(be);
            if (len == 0 || len > max_frame()) return -1;
            if (left < 4 + len) break;
            tap_write(c, f + 4, len);
            pos += 4 + len;
            continue;
        }
        if (left < 2) break;
        int opcode = f[0] & 0x0f;
        int masked = f[1] & 0x80;
        uint64_t len = f[1] & 0x7f;
        size_t h = 2;
        if (len == 126) {
            if (left < 4) break;
            len = ((uint64_t)f[2] << 8) | f[3];
            h = 4;
        } else if (len == 127) {
            if (left < 10) break;
            len = 0;
            for (int i = 0; i < 8; i++) len = (len << 8) | f[2 + i];
            h = 10;
        }
        if (len > max_frame() + 125) return -1;
        unsigned char key[4] = {0, 0, 0, 0};
        if (masked) {
            if (left < h + 4) break;
            memcpy(key, f + h, 4);
            h += 4;
        }
        if (left < h + len) break;
        unsigned char *payload = f + h;
        if (masked) xor_mask(payload, payload, (size_t)len, key);
        switch (opcode) {
        case 0x2:
        case 0x0:
            tap_write(c, payload, (size_t)len);
            break;
        case 0x9: /* ping: answer */
            out_append(c, 0xA, payload, (size_t)len);
            want_flush = 1;
            break;
        case 0x8: /* close: echo and end */
            out_append(c, 0x8, payload, len >= 2 ? 2 : 0);
            flush_out(c);
            return -1;
        default:
            break;
        }
        pos += h + (size_t)len;
    }
    if (pos) {
        memmove(p, p + pos, avail - pos);
        c->in_len = avail - pos;
    }
    if (want_flush && after_output(c) < 0) return -1;
    return 0;
}

static void on_sock_readable(struct conn *c) {
    for (int round = 0; round < 4; round++) {
        if (c->in_cap - c->in_len < RECV_CHUNK / 4) break;
        ssize_t n = recv(c->sock, c->in + c->in_len, c->in_cap - c->in_len, 0);
        if (n == 0) {
            conn_close(c);
            return;
        }
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            if (errno == EINTR) continue;
            conn_close(c);
            return;
        }
        c->in_len += (size_t)n;
        if (!c->open) {
            int r = ws_server_handshake(c);
            if (r < 0) {
                conn_close(c);
                return;
            }
            if (r == 0) continue;
        }
        if (parse_input(c) < 0) {
            conn_close(c);
            return;
        }
        if ((size_t)n < RECV_CHUNK / 2) return;
    }
}

static void on_tap_readable(struct conn *c) {
    if (c->out_len) return; /* still sending the last batch */
    for (int i = 0; i < TAP_BATCH; i++) {
        ssize_t n = read(c->tap, g_frame, max_frame() + 64);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            if (errno == EINTR) continue;
            die("read tap");
        }
        if (out_append(c, 0x2, g_frame, (size_t)n) < 0) break;
    }
    if (after_output(c) < 0) conn_close(c);
}

static void on_sock_writable(struct conn *c) {
    if (after_output(c) < 0) conn_close(c);
}

static struct conn *conn_new(int sock, int server) {
    struct conn *c = calloc(1, sizeof *c);
    if (!c) die("calloc");
    c->sock = sock;
    c->tap = -1;
    c->framing = g_framing;
    c->server = server;
    c->open = g_framing == FRAMING_STREAM;
    c->in_cap = RECV_CHUNK + 2 * (max_frame() + 64);
    c->in = malloc(c->in_cap);
    c->out_cap = TAP_BATCH * (max_frame() + 64) + 256;
    c->out = malloc(c->out_cap);
    if (!c->in || !c->out) die("malloc");
    if (getrandom(&c->rng, sizeof c->rng, 0) != sizeof c->rng || !c->rng) c->rng = 88172645463325252ULL;
    c->ep_sock.kind = EP_SOCK;
    c->ep_sock.c = c;
    int one = 1;
    setsockopt(sock, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    ep_ctl(EPOLL_CTL_ADD, sock, EPOLLIN, &c->ep_sock);
    return c;
}

static void on_listen(int lfd) {
    while (1) {
        int s = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (s < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            if (errno == EINTR || errno == ECONNABORTED) continue;
            perror("accept");
            return;
        }
        struct conn *c = conn_new(s, 1);
        if (c->open) start_tap(c);
    }
}

static int g_listen_fd = -1;

static void loop(void) {
    struct epoll_event evs[MAX_EVENTS];
    while (1) {
        int n = epoll_wait(g_epfd, evs, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            struct ep *ep = evs[i].data.ptr;
            uint32_t e = evs[i].events;
            if (ep->kind == EP_LISTEN) {
                on_listen(g_listen_fd);
                continue;
            }
            struct conn *c = ep->c;
            if (c->dead) continue;
            if (ep->kind == EP_SOCK) {
                if (e & EPOLLOUT) on_sock_writable(c);
                if (!c->dead && (e & (EPOLLIN | EPOLLERR | EPOLLHUP))) on_sock_readable(c);
            } else if (e & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
                on_tap_readable(c);
            }
        }
        free_dead();
    }
}


static void usage(void) {
    fprintf(stderr,
            "usage: minirelay server ws|stream PORT BRIDGE MTU\n"
            "       minirelay client ws|stream HOST PORT TAPNAME MTU\n");
    exit(2);
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    if (argc < 3) usage();
    if (strcmp(argv[2], "ws") == 0)
        g_framing = FRAMING_WS;
    else if (strcmp(argv[2], "stream") == 0)
        g_framing = FRAMING_STREAM;
    else
        usage();
    g_epfd = epoll_create1(EPOLL_CLOEXEC);
    if (g_epfd < 0) die("epoll_create1");

    if (strcmp(argv[1], "server") == 0 && argc == 6) {
        g_is_server = 1;
        g_bridge = argv[4];
        g_mtu = atoi(argv[5]);
        g_frame = malloc(max_frame() + 64);
        int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (lfd < 0) die("socket");
        int one = 1;
        setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        struct sockaddr_in sa;
        memset(&sa, 0, sizeof sa);
        sa.sin_family = AF_INET;
        sa.sin_port = htons((uint16_t)atoi(argv[3]));
        sa.sin_addr.s_addr = htonl(INADDR_ANY);
        if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0) die("bind");
        if (listen(lfd, 512) < 0) die("listen");
        g_listen_fd = lfd;
        static struct ep lep = {EP_LISTEN, NULL};
        ep_ctl(EPOLL_CTL_ADD, lfd, EPOLLIN, &lep);
        printf("listening\n");
        fflush(stdout);
        loop();
    }
    if (strcmp(argv[1], "client") == 0 && argc == 7) {
        g_mtu = atoi(argv[6]);
        g_frame = malloc(max_frame() + 64);
        char name[IFNAMSIZ];
        int tap = open_tap(argv[5], name);
        struct sockaddr_in sa;
        memset(&sa, 0, sizeof sa);
        sa.sin_family = AF_INET;
        sa.sin_port = htons((uint16_t)atoi(argv[4]));
        if (inet_pton(AF_INET, argv[3], &sa.sin_addr) != 1) usage();
        int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (s < 0) die("socket");
        if (connect(s, (struct sockaddr *)&sa, sizeof sa) < 0) die("connect");
        struct conn *c = conn_new(s, 0);
        c->tap = tap;
        snprintf(c->tapname, sizeof c->tapname, "%s", name);
        if (g_framing == FRAMING_WS) {
            char req[512];
            int n = snprintf(req, sizeof req,
                             "GET / HTTP/1.1\r\nHost: %s:%s\r\nUpgrade: websocket\r\n"
                             "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                             "Sec-WebSocket-Version: 13\r\n\r\n",
                             argv[3], argv[4]);
            if (send(s, req, (size_t)n, MSG_NOSIGNAL) != n) die("send handshake");
            while (1) {
                ssize_t r = recv(s, c->in + c->in_len, HS_MAX, 0);
                if (r <= 0) die("handshake: connection closed");
                c->in_len += (size_t)r;
                unsigned char *end = memmem(c->in, c->in_len, "\r\n\r\n", 4);
                if (!end) {
                    if (c->in_len >= HS_MAX) die("handshake: response too long");
                    continue;
                }
                if (c->in_len < 12 || memcmp(c->in + 9, "101", 3) != 0) {
                    fprintf(stderr, "handshake refused: %.*s\n", (int)(end - c->in), c->in);
                    exit(1);
                }
                size_t hlen = (size_t)(end - c->in) + 4;
                memmove(c->in, c->in + hlen, c->in_len - hlen);
                c->in_len -= hlen;
                break;
            }
        }
        c->open = 1;
        if (fcntl(s, F_SETFL, fcntl(s, F_GETFL) | O_NONBLOCK) < 0) die("fcntl");
        c->ep_tap.kind = EP_TAP;
        c->ep_tap.c = c;
        ep_ctl(EPOLL_CTL_ADD, tap, EPOLLIN, &c->ep_tap);
        printf("connected %s\n", name);
        fflush(stdout);
        if (c->in_len && parse_input(c) < 0) return 0;
        loop();
    }
    usage();
    return 2;
}
