// Held-out NLL of a GGUF by llama.cpp on token ids, for bench/gguf-frontier.ts only (never built by the package or CI).
// node-llama-cpp (test/gguf/llama.ts) gives the same numbers, but it builds a probability map per position in
// JavaScript: ~10x the CPU of this on the fixtures. Built against a llama.cpp checkout the bench was pointed at:
//   g++ -O2 -std=c++17 bench/gguf-nll.cpp -I$LLAMA/include -I$LLAMA/ggml/include -L$LLAMA/build/bin -lllama -lggml -lggml-base \
//       -Wl,-rpath,$LLAMA/build/bin -o /tmp/gguf-nll
//   /tmp/gguf-nll model.gguf windows.i32 SEQ [threads]
// windows.i32: the windows as little-endian int32, SEQ tokens each (the [BOS] + window convention of `moe eval`);
// every window is a fresh sequence, position i's next-token log-softmax is scored against token i+1.
// Prints one line: "<sum of -log p> <tokens scored>".
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "llama.h"

static void quiet(ggml_log_level level, const char * text, void *) {
    if (level == GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

int main(int argc, char ** argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s model.gguf windows.i32 SEQ [threads]\n", argv[0]);
        return 2;
    }
    const int seq = atoi(argv[3]);
    const int threads = argc > 4 ? atoi(argv[4]) : 2;
    FILE * f = fopen(argv[2], "rb");
    if (!f) {
        fprintf(stderr, "cannot open %s\n", argv[2]);
        return 1;
    }
    std::vector<llama_token> ids;
    llama_token t;
    while (fread(&t, sizeof t, 1, f) == 1) ids.push_back(t);
    fclose(f);
    if (seq < 2 || ids.size() % seq != 0) {
        fprintf(stderr, "%zu tokens are not whole windows of %d\n", ids.size(), seq);
        return 1;
    }
    llama_log_set(quiet, nullptr);
    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    // no repacked / AMX weight buffers: a native (-march=native) build reports AMX on this VM and dies with an
    // illegal instruction on quantized weights; the plain CPU path computes the same products
    mp.use_extra_bufts = false;
    llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (!model) {
        fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = seq < 64 ? 64 : seq;
    cp.n_batch = cp.n_ctx;
    cp.n_ubatch = cp.n_ctx;
    cp.n_seq_max = 1;
    cp.n_threads = threads;
    cp.n_threads_batch = threads;
    llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) {
        fprintf(stderr, "cannot create a context\n");
        return 1;
    }
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    llama_batch batch = llama_batch_init(seq, 0, 1);
    double nll = 0;
    long scored = 0;
    for (size_t w = 0; w < ids.size() / seq; w++) {
        llama_memory_clear(llama_get_memory(ctx), true);
        batch.n_tokens = seq;
        for (int i = 0; i < seq; i++) {
            batch.token[i] = ids[w * seq + i];
            batch.pos[i] = i;
            batch.n_seq_id[i] = 1;
            batch.seq_id[i][0] = 0;
            batch.logits[i] = i < seq - 1;
        }
        if (llama_decode(ctx, batch) != 0) {
            fprintf(stderr, "llama_decode failed on window %zu\n", w);
            return 1;
        }
        for (int i = 0; i < seq - 1; i++) {
            const float * lg = llama_get_logits_ith(ctx, i);
            double mx = lg[0];
            for (int v = 1; v < n_vocab; v++) mx = lg[v] > mx ? lg[v] : mx;
            double s = 0;
            for (int v = 0; v < n_vocab; v++) s += std::exp(lg[v] - mx);
            nll -= lg[ids[w * seq + i + 1]] - mx - std::log(s);
            scored++;
        }
    }
    printf("%.9f %ld\n", nll, scored);
    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
