/* The llamacpp engine's decode loop without Python in it: decode one token for each running
 * sequence, sample each row, feed the samples back, and again, on a thread of its own. Python
 * (decode_loop.py) reads the sampled ids as they come (sy_loop_wait blocks here, without the
 * GIL) and does everything that needs Python (stop strings, detokenizing, streaming) meanwhile,
 * on the other core. It stops the loop when the batch must change (a request arrives, ends or
 * is cancelled).
 *
 * A row samples as the embedded sampler does: logit bias, temperature, then a draw (or the
 * highest, greedy); rows with top-k or top-p hand that to a llama.cpp sampler chain built the
 * same way. The plain draw is done here because llama.cpp's costs a tenth of a small model's
 * step (it fills and normalizes a candidate array per token); this one is two vectorized passes.
 *
 * Built once per llama-cpp-python version and source hash by decode_loop.py, with -ffast-math
 * (the passes over the vocabulary vectorize), against the headers of the llama.cpp that
 * llama-cpp-python vendors and its libllama.so.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "llama.h"

#define FLOOR -80.0f /* exp(-80) adds nothing: a masked (-inf) logit counts as zero, never as NaN */

typedef struct {
    struct llama_sampler *chain; /* top-k / top-p: llama.cpp's chain does the whole draw */
    float inv_temperature;       /* 0: greedy */
    int n_bias;
    const int32_t *bias_ids;     /* owned by Python, alive while the run is */
    const float *bias;
    uint64_t rng;
} sy_row;

typedef struct {
    struct llama_context *ctx;
    struct llama_batch batch;
    int max_rows, capacity, vocab;    /* vocab: the tokenizer's (ids past it are padding, never drawn) */
    int n_rows, max_steps, scoring;
    int32_t *seq, *pos, *last;        /* per row: sequence id, next position, token to decode next */
    sy_row *rows;
    float *scratch;                   /* one row's logits, biased and scaled */
    int32_t *out;                     /* row r's token of step s at out[s * n_rows + r] */
    float *logprob, *entropy;         /* beside it, when scoring: the token's logprob, the entropy */
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int produced;                     /* steps whose tokens are in `out` (under mu) */
    int wanted;                       /* a waiter wakes once more than this are (under mu) */
    int done;                         /* the run has ended (under mu) */
    int status;                       /* 0, or what llama_decode returned */
    int started;
    atomic_int stop;
} sy_loop;

sy_loop *sy_loop_new(struct llama_context *ctx, int max_rows, int capacity, int vocab) {
    sy_loop *L = calloc(1, sizeof(sy_loop));
    if (!L) return NULL;
    L->ctx = ctx;
    L->max_rows = max_rows;
    L->capacity = capacity;
    L->vocab = vocab;
    L->batch = llama_batch_init(max_rows, 0, 1);
    L->seq = calloc(max_rows, sizeof(int32_t));
    L->pos = calloc(max_rows, sizeof(int32_t));
    L->last = calloc(max_rows, sizeof(int32_t));
    L->rows = calloc(max_rows, sizeof(sy_row));
    L->scratch = calloc(vocab, sizeof(float));
    L->out = calloc((size_t)capacity * max_rows, sizeof(int32_t));
    L->logprob = calloc((size_t)capacity * max_rows, sizeof(float));
    L->entropy = calloc((size_t)capacity * max_rows, sizeof(float));
    pthread_mutex_init(&L->mu, NULL);
    pthread_cond_init(&L->cv, NULL);
    return L;
}

void sy_loop_row(sy_loop *L, int r, int32_t seq, int32_t pos, int32_t last, struct llama_sampler *chain,
                 float temperature, int n_bias, const int32_t *bias_ids, const float *bias, uint64_t seed) {
    L->seq[r] = seq;
    L->pos[r] = pos;
    L->last[r] = last;
    sy_row *row = &L->rows[r];
    row->chain = chain;
    row->inv_temperature = temperature > 0.0f ? 1.0f / temperature : 0.0f;
    row->n_bias = n_bias;
    row->bias_ids = bias_ids;
    row->bias = bias;
    row->rng = seed | 1;
}

int32_t *sy_loop_tokens(sy_loop *L) { return L->out; }
float *sy_loop_logprobs(sy_loop *L) { return L->logprob; }
float *sy_loop_entropies(sy_loop *L) { return L->entropy; }

static float uniform(uint64_t *state) { /* xorshift64*: [0, 1) with 24 bits */
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return (float)((x * 0x2545F4914F6CDD1DULL) >> 40) * (1.0f / 16777216.0f);
}

/* Bias, temperature and a draw from the softmax (or the highest, greedy). */
static int32_t draw(sy_loop *L, sy_row *row, const float *logits) {
    int n = L->vocab;
    float *x = L->scratch;
    memcpy(x, logits, (size_t)n * sizeof(float));
    for (int b = 0; b < row->n_bias; b++) x[row->bias_ids[b]] += row->bias[b];
    float top = x[0];
    int best = 0;
    for (int i = 1; i < n; i++) {
        if (x[i] > top) {
            top = x[i];
            best = i;
        }
    }
    if (row->inv_temperature == 0.0f) return best;
    float scale = row->inv_temperature, total = 0.0f;
    for (int i = 0; i < n; i++) {
        float z = (x[i] - top) * scale;
        x[i] = expf(z < FLOOR ? FLOOR : z);
        total += x[i];
    }
    float target = uniform(&row->rng) * total, running = 0.0f;
    for (int i = 0; i < n; i++) {
        running += x[i];
        if (running > target) return i;
    }
    return best; /* rounding left the target past the sum */
}

/* The model's own confidence in `token` (before bias and temperature, as the embedded sampler
 * scores it): its logprob, and the entropy of the distribution it came from. */
static void score(const float *logits, int n, int32_t token, float *logprob, float *entropy) {
    float top = logits[0];
    for (int i = 1; i < n; i++) top = logits[i] > top ? logits[i] : top;
    float total = 0.0f, weighted = 0.0f;
    for (int i = 0; i < n; i++) {
        float x = logits[i] - top;
        x = x < FLOOR ? FLOOR : x;
        float e = expf(x);
        total += e;
        weighted += e * x;
    }
    float log_z = logf(total);
    *logprob = logits[token] - top - log_z;
    *entropy = log_z - weighted / total;
}

static void *run(void *arg) {
    sy_loop *L = arg;
    int n = L->n_rows, status = 0;
    for (int step = 0; step < L->max_steps && !atomic_load(&L->stop); step++) {
        struct llama_batch *b = &L->batch;
        b->n_tokens = n;
        for (int r = 0; r < n; r++) {
            b->token[r] = L->last[r];
            b->pos[r] = L->pos[r];
            b->n_seq_id[r] = 1;
            b->seq_id[r][0] = L->seq[r];
            b->logits[r] = 1;
        }
        status = llama_decode(L->ctx, *b);
        if (status != 0) break;
        int32_t *tokens = L->out + (size_t)step * n;
        for (int r = 0; r < n; r++) {
            const float *logits = llama_get_logits_ith(L->ctx, r);
            sy_row *row = &L->rows[r];
            tokens[r] = row->chain ? llama_sampler_sample(row->chain, L->ctx, r) : draw(L, row, logits);
            if (L->scoring) {
                size_t at = (size_t)step * n + r;
                score(logits, L->vocab, tokens[r], L->logprob + at, L->entropy + at);
            }
            L->last[r] = tokens[r];
            L->pos[r] += 1;
        }
        pthread_mutex_lock(&L->mu);
        L->produced = step + 1;
        if (L->produced > L->wanted) pthread_cond_signal(&L->cv); /* no wake-up a waiter would sleep through */
        pthread_mutex_unlock(&L->mu);
    }
    pthread_mutex_lock(&L->mu);
    L->status = status;
    L->done = 1;
    pthread_cond_signal(&L->cv);
    pthread_mutex_unlock(&L->mu);
    return NULL;
}

/* Run up to max_steps steps over rows 0..n_rows-1 (set with sy_loop_row), scoring each token
 * when asked. 0, or an errno. */
int sy_loop_start(sy_loop *L, int n_rows, int max_steps, int scoring) {
    if (L->started || n_rows < 1 || n_rows > L->max_rows) return EINVAL;
    L->n_rows = n_rows;
    L->scoring = scoring;
    L->max_steps = max_steps < L->capacity ? max_steps : L->capacity;
    L->produced = L->done = L->status = L->wanted = 0;
    atomic_store(&L->stop, 0);
    int err = pthread_create(&L->thread, NULL, run, L);
    if (err == 0) L->started = 1;
    return err;
}

/* Steps produced so far, once more than `seen` are, the run has ended, or timeout_us passed;
 * *done tells whether it has ended. */
int sy_loop_wait(sy_loop *L, int seen, int timeout_us, int *done) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += timeout_us / 1000000;
    until.tv_nsec += (long)(timeout_us % 1000000) * 1000;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec += 1;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&L->mu);
    L->wanted = seen;
    while (L->produced <= seen && !L->done) {
        if (pthread_cond_timedwait(&L->cv, &L->mu, &until) == ETIMEDOUT) break;
    }
    int produced = L->produced;
    *done = L->done;
    pthread_mutex_unlock(&L->mu);
    return produced;
}

/* Ask the run to end after the step it is in (safe from any thread). */
void sy_loop_stop(sy_loop *L) { atomic_store(&L->stop, 1); }

/* Wait for the run to end: llama_decode's status (0 when every step decoded). */
int sy_loop_join(sy_loop *L) {
    if (!L->started) return 0;
    pthread_join(L->thread, NULL);
    L->started = 0;
    return L->status;
}

void sy_loop_free(sy_loop *L) {
    if (!L) return;
    sy_loop_stop(L);
    sy_loop_join(L);
    llama_batch_free(L->batch);
    free(L->seq);
    free(L->pos);
    free(L->last);
    free(L->rows);
    free(L->scratch);
    free(L->out);
    free(L->logprob);
    free(L->entropy);
    pthread_mutex_destroy(&L->mu);
    pthread_cond_destroy(&L->cv);
    free(L);
}
