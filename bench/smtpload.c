/*
 * smtpload: the SMTP load generator of bench/, the same client for every peer.
 *
 * Usage: smtpload HOST PORT CLIENTS SESSIONS PER_SESSION SIZE RCPT
 *
 * CLIENTS threads share SESSIONS connections; each connection says EHLO, then
 * sends exactly PER_SESSION messages of about SIZE bytes to RCPT (MAIL, RCPT,
 * DATA, body, "." each waiting for its reply, no pipelining, like smtp-source),
 * then QUIT.  Written in C because the client must cost the 2-core machine far
 * less CPU than the servers it measures: a Python client took 4x the CPU of
 * Postfix's smtp-source, and smtp-source cannot hold a connection for exactly
 * N messages without a process start per connection.
 *
 * Prints one line: "ok=N failed=N seconds=S"; S is the wall time from the first
 * connect to the last QUIT.  A message counts as ok only if its "." got 250.
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

/* RFC 5321 4.5.3.1.5: a reply line is at most 512 octets; 4096 leaves room. */
#define REPLY_LIMIT 4096
#define IO_TIMEOUT_SECONDS 60
#define ERRORS_SHOWN 5

struct connection {
    int fd;
    char buf[REPLY_LIMIT];
    size_t start, end;
    char lastLine[200];
};

static struct sockaddr_in server;
static long sessions, perSession;
static char *message;
static size_t messageLength;
static char mailCommand[600], rcptCommand[600];
static long nextSession, accepted, failed;
static int errorsShown;
static pthread_mutex_t errorLock = PTHREAD_MUTEX_INITIALIZER;

static void complain(const char *what, struct connection *c)
{
    pthread_mutex_lock(&errorLock);
    if (errorsShown++ < ERRORS_SHOWN)
        fprintf(stderr, "smtpload: %s: %s (%s)\n", what, c->lastLine,
                errno ? strerror(errno) : "no error");
    pthread_mutex_unlock(&errorLock);
}

/* Read one whole reply (all continuation lines); return its code or -1. */
static int readReply(struct connection *c)
{
    for (;;) {
        char *nl = memchr(c->buf + c->start, '\n', c->end - c->start);
        if (nl) {
            char *line = c->buf + c->start;
            size_t length = nl - line + 1;
            size_t shown = length < sizeof c->lastLine ? length : sizeof c->lastLine - 1;
            memcpy(c->lastLine, line, shown);
            c->lastLine[shown] = 0;
            c->start += length;
            if (length < 4)
                return -1;
            if (line[3] == '-')
                continue;
            return atoi(line);
        }
        if (c->start > 0) {
            memmove(c->buf, c->buf + c->start, c->end - c->start);
            c->end -= c->start;
            c->start = 0;
        }
        if (c->end == sizeof c->buf)
            return -1;
        ssize_t n = recv(c->fd, c->buf + c->end, sizeof c->buf - c->end, 0);
        if (n <= 0) {
            snprintf(c->lastLine, sizeof c->lastLine, "%s", n == 0 ? "EOF" : "recv error");
            return -1;
        }
        c->end += n;
    }
}

static int sendAll(int fd, const char *data, size_t length)
{
    while (length > 0) {
        ssize_t n = send(fd, data, length, MSG_NOSIGNAL);
        if (n <= 0)
            return -1;
        data += n;
        length -= n;
    }
    return 0;
}

static int command(struct connection *c, const char *text, size_t length, int expected)
{
    if (sendAll(c->fd, text, length) < 0)
        return -1;
    return readReply(c) == expected ? 0 : -1;
}

static int openConnection(struct connection *c)
{
    struct timeval timeout = {IO_TIMEOUT_SECONDS, 0};
    int one = 1;
    c->start = c->end = 0;
    c->lastLine[0] = 0;
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (c->fd < 0)
        return -1;
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, (struct sockaddr *) &server, sizeof server) < 0) {
        snprintf(c->lastLine, sizeof c->lastLine, "connect");
        return -1;
    }
    if (readReply(c) / 100 != 2)
        return -1;
    static const char ehlo[] = "EHLO bench.local\r\n";
    return command(c, ehlo, sizeof ehlo - 1, 250);
}

/* Run one session; return how many of its messages got 250. */
static long runSession(struct connection *c)
{
    long done = 0;
    errno = 0;
    if (openConnection(c) < 0) {
        complain("greeting", c);
        goto out;
    }
    for (; done < perSession; done++) {
        if (command(c, mailCommand, strlen(mailCommand), 250) < 0
            || command(c, rcptCommand, strlen(rcptCommand), 250) < 0
            || command(c, "DATA\r\n", 6, 354) < 0
            || command(c, message, messageLength, 250) < 0) {
            complain("transaction", c);
            goto out;
        }
    }
    command(c, "QUIT\r\n", 6, 221);
out:
    if (c->fd >= 0)
        close(c->fd);
    return done;
}

static void *client(void *unused)
{
    struct connection *c = malloc(sizeof *c);
    (void) unused;
    while (__atomic_fetch_add(&nextSession, 1, __ATOMIC_SEQ_CST) < sessions) {
        long ok = runSession(c);
        __atomic_fetch_add(&accepted, ok, __ATOMIC_SEQ_CST);
        __atomic_fetch_add(&failed, perSession - ok, __ATOMIC_SEQ_CST);
    }
    free(c);
    return NULL;
}

/* Header, then 78-byte lines of 'x' up to about size bytes, then the final dot. */
static void buildMessage(long size, const char *rcpt)
{
    static const char line[] =
        "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n";
    size_t capacity = size + 1024 + strlen(rcpt);
    message = malloc(capacity);
    messageLength = snprintf(message, capacity,
        "From: <bench@bench.local>\r\nTo: <%s>\r\nSubject: bench\r\n\r\n", rcpt);
    while (messageLength + sizeof line - 1 <= (size_t) size) {
        memcpy(message + messageLength, line, sizeof line - 1);
        messageLength += sizeof line - 1;
    }
    memcpy(message + messageLength, ".\r\n", 3);
    messageLength += 3;
}

int main(int argc, char **argv)
{
    if (argc != 8) {
        fprintf(stderr, "usage: smtpload HOST PORT CLIENTS SESSIONS PER_SESSION SIZE RCPT\n");
        return 2;
    }
    int clients = atoi(argv[3]);
    sessions = atol(argv[4]);
    perSession = atol(argv[5]);
    long size = atol(argv[6]);
    const char *rcpt = argv[7];
    memset(&server, 0, sizeof server);
    server.sin_family = AF_INET;
    server.sin_port = htons(atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &server.sin_addr) != 1 || clients < 1 || sessions < 1
        || perSession < 1 || size < 1 || strlen(rcpt) > 500) {
        fprintf(stderr, "smtpload: bad arguments\n");
        return 2;
    }
    snprintf(mailCommand, sizeof mailCommand, "MAIL FROM:<bench@bench.local>\r\n");
    snprintf(rcptCommand, sizeof rcptCommand, "RCPT TO:<%s>\r\n", rcpt);
    buildMessage(size, rcpt);

    pthread_t *threads = calloc(clients, sizeof *threads);
    struct timespec begin, end;
    clock_gettime(CLOCK_MONOTONIC, &begin);
    for (int i = 0; i < clients; i++)
        if (pthread_create(&threads[i], NULL, client, NULL) != 0) {
            fprintf(stderr, "smtpload: cannot start thread %d\n", i);
            return 2;
        }
    for (int i = 0; i < clients; i++)
        pthread_join(threads[i], NULL);
    clock_gettime(CLOCK_MONOTONIC, &end);
    double seconds = (end.tv_sec - begin.tv_sec) + (end.tv_nsec - begin.tv_nsec) / 1e9;
    printf("ok=%ld failed=%ld seconds=%.6f\n", accepted, failed, seconds);
    return failed == 0 ? 0 : 1;
}
