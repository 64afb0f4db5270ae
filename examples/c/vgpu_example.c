/* A guest program in C using the vgpu library: every typed helper, a request filled
 * and read in place (zero-copy), pipelining with tags, and error handling.
 *
 *   cc vgpu_example.c $(pkg-config --cflags --libs vgpu-client) -o vgpu_example
 *   ./vgpu_example                 # in a guest: finds the ivshmem device in sysfs
 *   ./vgpu_example REGION          # on the host: a region file
 *   ./vgpu_example REGION --bench N   # busy-polling: median NOOP and 1K VECTOR_ADD, and
 *                                     # 50 N NOOPs pipelined 64 deep
 */
#define _POSIX_C_SOURCE 199309L /* clock_gettime */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "vgpu_client.h"

#define CHECK(call)                                                                 \
    do {                                                                            \
        int rc_ = (call);                                                           \
        if (rc_ != VGPU_OK) {                                                       \
            fprintf(stderr, "%s: %s (%s)\n", #call, vgpu_strerror(rc_),             \
                    vgpu_last_error(client));                                       \
            exit(1);                                                                \
        }                                                                           \
    } while (0)

static VgpuClient *client;

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, n, sizeof *v, by_value);
    return v[n / 2];
}

static void bench(int n) {
    double *t = malloc(n * sizeof *t);
    float a[1024], b[1024], out[1024];
    for (int i = 0; i < 1024; i++) a[i] = (float)i, b[i] = 1.0f;
    for (int i = 0; i < n; i++) {
        double start = now_ns();
        CHECK(vgpu_noop(client, NULL));
        t[i] = now_ns() - start;
    }
    printf("c noop median %.0f ns\n", median(t, n));
    for (int i = 0; i < n; i++) {
        double start = now_ns();
        CHECK(vgpu_vector_add(client, a, b, out, 1024));
        t[i] = now_ns() - start;
    }
    printf("c vector_add_1k median %.0f ns\n", median(t, n));
    free(t);
    /* Pipelined: 64 NOOPs in flight, each submitted and waited for by tag. */
    long total = 50L * n, submitted = 0, answered = 0;
    uint32_t tags[64];
    double start = now_ns();
    while (answered < total) {
        for (; submitted - answered < 64 && submitted < total; submitted++)
            CHECK(vgpu_submit(client, 1, NULL, NULL, NULL, NULL, &tags[submitted % 64]));
        CHECK(vgpu_wait(client, tags[answered % 64], 0, NULL));
        answered++;
    }
    printf("c pipelined noop %.0f requests/s\n", total / ((now_ns() - start) / 1e9));
}

int main(int argc, char **argv) {
    int benchmark = argc > 3 && strcmp(argv[2], "--bench") == 0;
    VgpuOptions options = {0};
    options.region = argc > 1 ? argv[1] : NULL;
    options.spin = (uint8_t)benchmark; /* busy-poll: the lowest latency */
    int rc = vgpu_open(&options, &client);
    if (rc != VGPU_OK) {
        fprintf(stderr, "vgpu_open: %s (%s)\n", vgpu_strerror(rc), vgpu_last_error(NULL));
        return 1;
    }
    if (benchmark) {
        bench(atoi(argv[3]));
        vgpu_close(client);
        return 0;
    }
    VgpuIdentity id;
    CHECK(vgpu_identity(client, &id));
    printf("vm %u, pool %c, priority %u\n", id.vm_id, id.pool, id.priority);
    const char *warnings = vgpu_warnings(client);
    printf("warnings: %s\n", *warnings ? warnings : "none");

    enum { N = 4096 };
    static float x[N], y[N], out[N];
    for (int i = 0; i < N; i++) x[i] = (float)(i % 64) / 8.0f, y[i] = (float)(i % 7);
    CHECK(vgpu_vector_add(client, x, y, out, N));
    for (int i = 0; i < N; i++)
        if (out[i] != x[i] + y[i]) { fprintf(stderr, "vector_add: element %d wrong\n", i); return 1; }
    CHECK(vgpu_saxpy(client, 2.0f, x, y, out, N));
    for (int i = 0; i < N; i++)
        if (out[i] != 2.0f * x[i] + y[i]) { fprintf(stderr, "saxpy: element %d wrong\n", i); return 1; }
    float dot;
    CHECK(vgpu_dot(client, x, y, 16, &dot));
    float want = 0;
    for (int i = 0; i < 16; i++) want += x[i] * y[i];
    if (dot != want) { fprintf(stderr, "dot: %f, expected %f\n", dot, want); return 1; }
    float a[6] = {1, 2, 3, 4, 5, 6}, b[6] = {1, 0, 0, 1, 1, 1}, c[4];
    CHECK(vgpu_matmul(client, a, b, c, 2, 3, 2)); /* [1 2 3; 4 5 6] x [1 0; 0 1; 1 1] */
    if (c[0] != 4 || c[1] != 5 || c[2] != 10 || c[3] != 11) { fprintf(stderr, "matmul wrong\n"); return 1; }
    unsigned char msg[100], back[100];
    for (int i = 0; i < 100; i++) msg[i] = (unsigned char)i;
    CHECK(vgpu_echo(client, msg, back, sizeof msg));
    if (memcmp(msg, back, sizeof msg) != 0) { fprintf(stderr, "echo differs\n"); return 1; }
    CHECK(vgpu_sleep_us(client, 100));
    CHECK(vgpu_noop(client, "FROM_C"));
    printf("helpers: vector_add, saxpy, dot, matmul, echo, sleep_us, noop ok\n");

    /* Zero-copy: operands written straight into the shared arena, the answer read
     * from it. */
    VgpuBuffer in, res;
    CHECK(vgpu_buffer_alloc(client, 2 * 256 * sizeof(float), &in));
    CHECK(vgpu_buffer_alloc(client, 256 * sizeof(float), &res));
    float *operands = (float *)in.data;
    for (int i = 0; i < 256; i++) operands[i] = (float)i, operands[256 + i] = 0.5f;
    uint32_t args[3] = {256, 0, 0}, tag;
    CHECK(vgpu_submit(client, 4 /* VECTOR_ADD */, args, &in, &res, NULL, &tag));
    VgpuCompletion done;
    CHECK(vgpu_wait(client, tag, 5000, &done));
    const float *sum = (const float *)res.data;
    if (done.status != 1 || done.out_len != 1024 || sum[255] != 255.5f) {
        fprintf(stderr, "zero-copy VECTOR_ADD: status %u, %u bytes\n", done.status, done.out_len);
        return 1;
    }
    printf("zero-copy: VECTOR_ADD of 256 floats in place, queued %llu ns, executed %llu ns\n",
           (unsigned long long)done.queued_ns, (unsigned long long)done.exec_ns);

    /* Pipelining: eight requests in flight, collected by tag. */
    uint32_t tags[8];
    for (int i = 0; i < 8; i++) CHECK(vgpu_submit(client, 1 /* NOOP */, NULL, NULL, NULL, "PIPELINED", &tags[i]));
    for (int i = 7; i >= 0; i--) {
        int polled = vgpu_poll(client, tags[i], &done);
        if (polled == VGPU_E_AGAIN) CHECK(vgpu_wait(client, tags[i], 5000, &done));
        else CHECK(polled);
        if (done.tag != tags[i] || done.status != 1) { fprintf(stderr, "pipelined answer wrong\n"); return 1; }
    }
    printf("pipelining: 8 requests in flight, all answered\n");

    /* A batch: staged requests become visible together at vgpu_flush. */
    for (int i = 0; i < 8; i++) CHECK(vgpu_stage(client, 1 /* NOOP */, NULL, NULL, NULL, "BATCH", &tags[i]));
    CHECK(vgpu_flush(client));
    for (int i = 0; i < 8; i++) {
        CHECK(vgpu_wait(client, tags[i], 5000, &done));
        if (done.tag != tags[i] || done.status != 1) { fprintf(stderr, "batched answer wrong\n"); return 1; }
    }
    printf("batch: 8 requests staged, one flush, all answered\n");

    /* Errors are codes, never crashes. */
    if (vgpu_vector_add(client, NULL, y, out, N) != VGPU_E_INVALID) return 1;
    printf("null pointer: %s (%s)\n", vgpu_strerror(VGPU_E_INVALID), vgpu_last_error(client));
    if (vgpu_wait(client, 12345, 10, &done) != VGPU_E_UNKNOWN_TAG) return 1;
    VgpuBuffer keep, fake = {0};
    CHECK(vgpu_buffer_alloc(client, 64, &keep));
    fake.offset = 999999, fake.len = 4; /* not a buffer of this client */
    if (vgpu_submit(client, 2, NULL, &keep, &fake, NULL, &tag) != VGPU_E_INVALID) return 1;
    CHECK(vgpu_buffer_free(client, &keep)); /* not submitted: still the caller's */
    if (vgpu_buffer_free(client, &keep) != VGPU_E_INVALID) return 1; /* and only once */
    printf("foreign buffer refused: %s\n", vgpu_last_error(client));
    VgpuBuffer bad;
    CHECK(vgpu_buffer_alloc(client, 16, &bad));
    uint32_t shape[3] = {1000, 0, 0};
    CHECK(vgpu_submit(client, 4, shape, &bad, NULL, "BAD_SHAPE", &tag));
    CHECK(vgpu_wait(client, tag, 5000, &done));
    printf("refused request: status %u, %s\n", done.status, vgpu_strerror((int)done.error));
    if (done.status != 2) return 1;
    vgpu_close(client);
    printf("done\n");
    return 0;
}
