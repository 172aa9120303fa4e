/*
 * pkgload: one load generator for SMTP, QMTP and QMQP, so that the three protocols'
 * rates are measured the same way (bench/packages.py).
 *
 * Usage: pkgload PROTO HOST PORT CLIENTS SESSIONS SIZE RCPT
 *
 * PROTO is smtp, qmtp or qmqp.  CLIENTS threads share SESSIONS connections, each
 * carrying one message of about SIZE bytes to RCPT, as QMQP must (one package per
 * connection); blocking sockets, TCP_NODELAY, every step awaiting its reply.
 *   smtp: greeting, EHLO, MAIL, RCPT, DATA, body, "." (250 counts), QUIT.
 *   qmtp: one package (LF encoding); its one response netstring starting with K counts.
 *   qmqp: one package; the reply netstring starting with K counts.
 * C for the reason bench/smtpload.c is: the client must cost the 2 shared CPUs far less
 * than the servers it measures.
 *
 * Prints one line: "ok=N failed=N seconds=S", S the wall time of the whole batch.
 * Exit 0 when every message was accepted, 1 otherwise, 2 on bad usage.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* Longest reply read: an SMTP reply line (RFC 5321: 512) or a QMTP/QMQP response. */
#define REPLY_LIMIT 4096
#define IO_TIMEOUT_SECONDS 60
#define ERRORS_SHOWN 5
#define SENDER "bench@bench.client"

enum proto { SMTP, QMTP, QMQP };

static enum proto proto;
static struct sockaddr_in server;
static long sessions;
static char *request;            /* QMTP/QMQP: the whole package; SMTP: the body with "." */
static size_t requestLength;
static char rcptCommand[600];
static long nextSession, accepted, failed;
static int errorsShown;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

struct conn {
    int fd;
    char buf[REPLY_LIMIT];
    size_t start, end;
};

static void complain(const char *what)
{
    pthread_mutex_lock(&lock);
    if (errorsShown++ < ERRORS_SHOWN)
        fprintf(stderr, "pkgload: %s (%s)\n", what, errno ? strerror(errno) : "no error");
    pthread_mutex_unlock(&lock);
}

static int sendAll(int fd, const char *data, size_t length)
{
    while (length) {
        ssize_t n = send(fd, data, length, MSG_NOSIGNAL);
        if (n <= 0) {
            if (n < 0 && errno == EINTR)
                continue;
            return -1;
        }
        data += n;
        length -= (size_t)n;
    }
    return 0;
}

static int fill(struct conn *c)
{
    if (c->start == c->end)
        c->start = c->end = 0;
    if (c->end == sizeof c->buf)
        return -1;
    ssize_t n = recv(c->fd, c->buf + c->end, sizeof c->buf - c->end, 0);
    if (n <= 0)
        return -1;
    c->end += (size_t)n;
    return 0;
}

/* One SMTP reply (all its lines); returns its code or -1. */
static int smtpReply(struct conn *c)
{
    for (;;) {
        char *nl = memchr(c->buf + c->start, '\n', c->end - c->start);
        if (nl == NULL) {
            if (fill(c) < 0)
                return -1;
            continue;
        }
        char *line = c->buf + c->start;
        c->start = (size_t)(nl - c->buf) + 1;
        if (nl - line < 4)
            return -1;
        if (line[3] != '-')
            return atoi(line);
    }
}

/* One netstring's first byte, the rest skipped; returns the byte or -1. */
static int netstringLetter(struct conn *c)
{
    for (;;) {
        char *colon = memchr(c->buf + c->start, ':', c->end - c->start);
        if (colon != NULL) {
            long length = strtol(c->buf + c->start, NULL, 10);
            size_t need = (size_t)(colon - c->buf) + 1 + (size_t)length + 1;
            if (length <= 0 || need > sizeof c->buf)
                return -1;
            while (c->end < need)
                if (fill(c) < 0)
                    return -1;
            int letter = (unsigned char)colon[1];
            c->start = need;
            return letter;
        }
        if (fill(c) < 0)
            return -1;
    }
}

static int expect(struct conn *c, const char *command, int code)
{
    if (command != NULL && sendAll(c->fd, command, strlen(command)) < 0)
        return -1;
    return smtpReply(c) == code ? 0 : -1;
}

static int smtpSession(struct conn *c)
{
    if (expect(c, NULL, 220) || expect(c, "EHLO bench.client\r\n", 250)
        || expect(c, "MAIL FROM:<" SENDER ">\r\n", 250) || expect(c, rcptCommand, 250)
        || expect(c, "DATA\r\n", 354))
        return -1;
    if (sendAll(c->fd, request, requestLength) < 0 || smtpReply(c) != 250)
        return -1;
    expect(c, "QUIT\r\n", 221);
    return 0;
}

static int packageSession(struct conn *c)
{
    if (sendAll(c->fd, request, requestLength) < 0)
        return -1;
    return netstringLetter(c) == 'K' ? 0 : -1;
}

static void *client(void *unused)
{
    (void)unused;
    struct timeval timeout = { IO_TIMEOUT_SECONDS, 0 };
    int one = 1;
    for (;;) {
        pthread_mutex_lock(&lock);
        long mine = nextSession++;
        pthread_mutex_unlock(&lock);
        if (mine >= sessions)
            return NULL;
        struct conn *c = calloc(1, sizeof *c);
        int ok = -1;
        errno = 0;
        c->fd = socket(AF_INET, SOCK_STREAM, 0);
        if (c->fd >= 0) {
            setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
            setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
            if (connect(c->fd, (struct sockaddr *)&server, sizeof server) == 0)
                ok = proto == SMTP ? smtpSession(c) : packageSession(c);
            else
                complain("connect");
            close(c->fd);
        }
        if (ok < 0 && errno)
            complain("session");
        else if (ok < 0)
            complain("refused or garbled reply");
        pthread_mutex_lock(&lock);
        if (ok == 0)
            accepted++;
        else
            failed++;
        pthread_mutex_unlock(&lock);
        free(c);
    }
}

/* A message of about SIZE bytes with LF line ends (CR LF and a final "." for SMTP). */
static char *body(size_t size, int crlf, size_t *length)
{
    const char *head = "Subject: bench\n\n";
    char *out = malloc(size + 200), *p = out;
    for (const char *h = head; *h; h++) {
        if (*h == '\n' && crlf)
            *p++ = '\r';
        *p++ = *h;
    }
    while ((size_t)(p - out) + 72 <= size) {
        memset(p, 'x', 70);
        p += 70;
        if (crlf)
            *p++ = '\r';
        *p++ = '\n';
    }
    if (crlf) {
        memcpy(p, ".\r\n", 3);
        p += 3;
    }
    *length = (size_t)(p - out);
    return out;
}

static char *package(const char *rcpt, size_t size, size_t *length)
{
    size_t bodyLength;
    char *text = body(size, 0, &bodyLength);
    size_t cap = bodyLength + 2 * strlen(rcpt) + 200;
    char *inner = malloc(cap), *out = malloc(cap + 40);
    int n;
    if (proto == QMTP) {  /* message (with its LF encoding byte), sender, recipient list */
        n = sprintf(inner, "%zu:\n", bodyLength + 1);
        memcpy(inner + n, text, bodyLength);
        n += (int)bodyLength;
        char list[600];
        int listLength = snprintf(list, sizeof list, "%zu:%s,", strlen(rcpt), rcpt);
        n += sprintf(inner + n, ",%zu:%s,%d:%s,", strlen(SENDER), SENDER, listLength, list);
        memcpy(out, inner, (size_t)n);
        *length = (size_t)n;
    } else {  /* one netstring around message, sender, recipient */
        n = sprintf(inner, "%zu:", bodyLength);
        memcpy(inner + n, text, bodyLength);
        n += (int)bodyLength;
        n += sprintf(inner + n, ",%zu:%s,%zu:%s,", strlen(SENDER), SENDER, strlen(rcpt), rcpt);
        int m = sprintf(out, "%d:", n);
        memcpy(out + m, inner, (size_t)n);
        out[m + n] = ',';
        *length = (size_t)(m + n + 1);
    }
    free(inner);
    free(text);
    return out;
}

int main(int argc, char **argv)
{
    if (argc != 8) {
        fprintf(stderr, "usage: pkgload smtp|qmtp|qmqp HOST PORT CLIENTS SESSIONS SIZE RCPT\n");
        return 2;
    }
    if (strcmp(argv[1], "smtp") == 0)
        proto = SMTP;
    else if (strcmp(argv[1], "qmtp") == 0)
        proto = QMTP;
    else if (strcmp(argv[1], "qmqp") == 0)
        proto = QMQP;
    else
        return 2;
    memset(&server, 0, sizeof server);
    server.sin_family = AF_INET;
    server.sin_port = htons((unsigned short)atoi(argv[3]));
    if (inet_pton(AF_INET, argv[2], &server.sin_addr) != 1)
        return 2;
    long clients = atol(argv[4]);
    sessions = atol(argv[5]);
    size_t size = (size_t)atol(argv[6]);
    const char *rcpt = argv[7];
    if (clients < 1 || sessions < 1 || strlen(rcpt) > 500)
        return 2;
    snprintf(rcptCommand, sizeof rcptCommand, "RCPT TO:<%s>\r\n", rcpt);
    if (proto == SMTP)
        request = body(size, 1, &requestLength);
    else
        request = package(rcpt, size, &requestLength);

    pthread_t *threads = calloc((size_t)clients, sizeof *threads);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < clients; i++)
        pthread_create(&threads[i], NULL, client, NULL);
    for (long i = 0; i < clients; i++)
        pthread_join(threads[i], NULL);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double seconds = (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("ok=%ld failed=%ld seconds=%.3f\n", accepted, failed, seconds);
    return failed ? 1 : 0;
}
