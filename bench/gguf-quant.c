// llama.cpp's own quantizer of one ggml type, for bench/gguf-kfit.ts only (never built by the package or CI): the
// rows it reads are quantized by ggml_quantize_chunk (quantize_q*_K with the importance given, as llama-quantize
// calls it) and the bytes written to stdout. Built from a llama.cpp checkout's ggml sources, without its backends:
//   S=$LLAMA/ggml/src; gcc -O2 -DGGML_VERSION='"bench"' -DGGML_COMMIT='"bench"' -I$LLAMA/ggml/include -I$S \
//     -c $S/ggml.c $S/ggml-quants.c bench/gguf-quant.c && g++ -O2 -I$LLAMA/ggml/include -I$S -c $S/ggml-threading.cpp \
//     && g++ ggml.o ggml-quants.o ggml-threading.o gguf-quant.o -lm -lpthread -o /tmp/gguf-quant
//   /tmp/gguf-quant TYPE ROWS N values.f32 (imatrix.f32 | -)
// (no -march=native: with FMA contraction the float32 sums could round differently from the port's.)
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggml.h"

// ggml.c refers to these for tensors in backend buffers, which this program never makes
void ggml_backend_tensor_set(void * t, const void * d, size_t o, size_t s) { abort(); }
void ggml_backend_tensor_memset(void * t, int v, size_t o, size_t s) { abort(); }
int ggml_backend_buffer_get_usage(void * b) { abort(); }

static float * readf(const char * path, size_t n) {
    float * v = malloc(sizeof(float) * n);
    FILE * f = fopen(path, "rb");
    if (!f || fread(v, sizeof(float), n, f) != n) { fprintf(stderr, "cannot read %zu floats from %s\n", n, path); exit(2); }
    fclose(f);
    return v;
}

int main(int argc, char ** argv) {
    if (argc < 6) { fprintf(stderr, "usage: %s TYPE ROWS N values.f32 (imatrix.f32 | -)\n", argv[0]); return 2; }
    // the IQ types need llama.cpp's grids: ggml_quantize_chunk builds them (ggml_quantize_init) on first use
    const char * names[] = {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_NL", "IQ4_XS"};
    const enum ggml_type types[] = {GGML_TYPE_Q2_K, GGML_TYPE_Q3_K, GGML_TYPE_Q4_K, GGML_TYPE_Q5_K, GGML_TYPE_Q6_K, GGML_TYPE_Q8_0,
                                    GGML_TYPE_IQ2_XXS, GGML_TYPE_IQ2_XS, GGML_TYPE_IQ2_S, GGML_TYPE_IQ3_XXS, GGML_TYPE_IQ3_S,
                                    GGML_TYPE_IQ4_NL, GGML_TYPE_IQ4_XS};
    const int ntypes = sizeof(types) / sizeof(types[0]);
    int t = -1;
    for (int i = 0; i < ntypes; i++) if (!strcmp(argv[1], names[i])) t = i;
    if (t < 0) { fprintf(stderr, "unknown type %s\n", argv[1]); return 2; }
    const int rows = atoi(argv[2]), n = atoi(argv[3]);
    float * x = readf(argv[4], (size_t)rows * n);
    float * im = strcmp(argv[5], "-") ? readf(argv[5], n) : NULL;
    if (!im && ggml_quantize_requires_imatrix(types[t])) { fprintf(stderr, "%s needs an importance matrix\n", argv[1]); return 2; }
    void * out = malloc(ggml_row_size(types[t], n) * rows);
    size_t w = ggml_quantize_chunk(types[t], x, out, 0, rows, n, im);
    fwrite(out, 1, w, stdout);
    return 0;
}
