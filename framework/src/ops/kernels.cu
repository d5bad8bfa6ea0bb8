// CUDA kernels of losa's fused ops (framework/src/ops). Compiled to PTX by framework/build.rs
// (feature `cuda`) and launched from ops/cuda.rs. Every kernel computes in float (double for
// double) and rounds once when it stores; every kernel writes every element of its output.
// Kernel names end in the dtype as candle spells it: _f32, _f64, _f16, _bf16.
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>

template <typename T> struct Acc { typedef float type; };
template <> struct Acc<double> { typedef double type; };

__device__ __forceinline__ float ld(float v) { return v; }
__device__ __forceinline__ double ld(double v) { return v; }
__device__ __forceinline__ float ld(__half v) { return __half2float(v); }
__device__ __forceinline__ float ld(__nv_bfloat16 v) { return __bfloat162float(v); }

__device__ __forceinline__ void st(float *d, float v) { *d = v; }
__device__ __forceinline__ void st(double *d, double v) { *d = v; }
__device__ __forceinline__ void st(__half *d, float v) { *d = __float2half(v); }
__device__ __forceinline__ void st(__nv_bfloat16 *d, float v) { *d = __float2bfloat16(v); }

__device__ __forceinline__ float erf_(float v) { return erff(v); }
__device__ __forceinline__ double erf_(double v) { return erf(v); }
__device__ __forceinline__ float exp_(float v) { return expf(v); }
__device__ __forceinline__ double exp_(double v) { return exp(v); }
__device__ __forceinline__ float log_(float v) { return logf(v); }
__device__ __forceinline__ double log_(double v) { return log(v); }
__device__ __forceinline__ float sqrt_(float v) { return sqrtf(v); }
__device__ __forceinline__ double sqrt_(double v) { return sqrt(v); }

// A divisor fixed for the launch with its magic number and shift (ops/fast_div.rs computes them
// and explains why): n / d = (umulhi(n, m) + n) >> s for every n < 2^31, in three instructions
// where a division is a subroutine of twenty. Larger indices take the plain division.
struct FastDiv {
  uint32_t d, m, s;
};
#define FAST_DIV_LIMIT (1ull << 31)
__device__ __forceinline__ uint32_t fdiv(uint32_t n, FastDiv f) { return (__umulhi(n, f.m) + n) >> f.s; }
// q = n / d and n - q * d, for n < 2^31.
__device__ __forceinline__ uint32_t fdivmod(uint32_t n, FastDiv f, uint32_t *rem) {
  const uint32_t q = fdiv(n, f);
  *rem = n - q * f.d;
  return q;
}

// The bias column of element i of a [outer, channels, inner] tensor: (i / inner) % channels.
__device__ __forceinline__ uint32_t channel_of(uint64_t i, FastDiv inner, FastDiv channels, bool fast) {
  if (!fast) return (uint32_t)((i / inner.d) % channels.d);
  uint32_t c;
  fdivmod(fdiv((uint32_t)i, inner), channels, &c);
  return c;
}

// 16 bytes of consecutive elements, moved by one load or store instruction. Element-wise kernels
// that move one 2-byte bf16 per thread keep too few bytes in flight to reach the memory's
// bandwidth (about a third of it on an H100, measured); 16 per thread do. A kernel takes its
// vector path when every pointer it touches is 16-byte aligned and its rows split into whole
// vectors (uniform across the launch), else the element-wise loop.
#define VEC_BYTES 16
template <typename T> struct VecOf {
  static constexpr int n = VEC_BYTES / sizeof(T);
  struct alignas(VEC_BYTES) type {
    T v[n];
  };
};
template <typename T> __device__ __forceinline__ typename VecOf<T>::type vload(const T *p) {
  return *reinterpret_cast<const typename VecOf<T>::type *>(p);
}
template <typename T> __device__ __forceinline__ void vstore(T *p, const typename VecOf<T>::type &v) {
  *reinterpret_cast<typename VecOf<T>::type *>(p) = v;
}
__device__ __forceinline__ bool aligned(const void *p) { return ((uintptr_t)p & (VEC_BYTES - 1)) == 0; }

__device__ __forceinline__ float max_(float a, float b) { return fmaxf(a, b); }
// gelu_erf(v) = v (1 + erf(v/√2)) / 2.
template <typename A> __device__ __forceinline__ A gelu_(A v) {
  return A(0.5) * v * (A(1) + erf_(v * A(0.70710678118654752440)));
}
// gelu_erf'(v) = (1 + erf(v/√2))/2 + v e^(-v²/2)/√(2π).
template <typename A> __device__ __forceinline__ A gelu_grad_(A v) {
  return A(0.5) * (A(1) + erf_(v * A(0.70710678118654752440))) + v * exp_(A(-0.5) * v * v) * A(0.39894228040143267794);
}
__device__ __forceinline__ double max_(double a, double b) { return fmax(a, b); }

template <typename A> __device__ __forceinline__ A warp_sum(A v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename A> __device__ __forceinline__ A warp_max(A v) {
  for (int o = 16; o > 0; o >>= 1) v = max_(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// `buf` holds 32 values in shared memory; the leading barrier lets callers reuse it.
template <typename A> __device__ A block_sum(A v, A *buf) {
  v = warp_sum(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) buf[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = warp_sum(lane < warps ? buf[lane] : A(0));
    if (lane == 0) buf[0] = v;
  }
  __syncthreads();
  return buf[0];
}

// Mean and 1/std of one row of length d by the whole block (two passes: the centred variance, as
// the composition); every thread gets them.
template <typename T, typename A>
__device__ void row_stats(const T *x, int d, double eps, A *buf, A *mean, A *rstd) {
  A s = 0;
  for (int j = threadIdx.x; j < d; j += blockDim.x) s += ld(x[j]);
  const A m = block_sum(s, buf) / A(d);
  A s2 = 0;
  for (int j = threadIdx.x; j < d; j += blockDim.x) {
    const A c = ld(x[j]) - m;
    s2 += c * c;
  }
  const A var = block_sum(s2, buf) / A(d);
  *mean = m;
  *rstd = A(1) / sqrt_(var + A(eps));
}

// Mean and 1/std of one row of length d, by the 32 lanes of a warp (lane `lane` reading elements
// lane, lane + 32, ...), as `row_stats`; every lane gets them.
template <typename T, typename A>
__device__ void warp_row_stats(const T *x, int d, double eps, int lane, A *mean, A *rstd) {
  A s = 0;
  for (int j = lane; j < d; j += 32) s += ld(x[j]);
  const A m = warp_sum(s) / A(d);
  A s2 = 0;
  for (int j = lane; j < d; j += 32) {
    const A c = ld(x[j]) - m;
    s2 += c * c;
  }
  *mean = m;
  *rstd = A(1) / sqrt_(warp_sum(s2) / A(d) + A(eps));
}

// The LayerNorms' vector path: a warp's row held in its lanes' registers, LN_LANE_ELEMS elements
// per lane at most (widths up to 1280, ViT-H's, whole), loaded 16 bytes at a time, so the row
// is read from memory once however many passes the statistics take (the element path reads
// 2-byte values one at a time, and each row three times). For f32, f16 and bf16 (an f64 row
// would take twice the registers), rows that split into whole vectors, and aligned pointers;
// otherwise the element path.
#define LN_LANE_ELEMS 40
template <typename T> struct RowVecs {
  static constexpr int V = VecOf<T>::n, K = LN_LANE_ELEMS / V;
  typename VecOf<T>::type v[K];
};

// Whether a row of width d takes the vector path (uniform across the launch: the pointers are
// those of row 0 and every row starts a whole number of vectors further on).
template <typename T> __device__ __forceinline__ bool row_vectors(int d) {
  return sizeof(T) <= 4 && d % RowVecs<T>::V == 0 && d / RowVecs<T>::V <= 32 * RowVecs<T>::K;
}

// Lane `lane`'s vectors of a row of nv vectors: vector k of the lane is the row's lane + 32 k.
template <typename T> __device__ __forceinline__ void load_row(const T *x, int nv, int lane, RowVecs<T> &r) {
#pragma unroll
  for (int k = 0; k < RowVecs<T>::K; ++k)
    if (lane + 32 * k < nv) r.v[k] = vload(x + (size_t)(lane + 32 * k) * RowVecs<T>::V);
}

// Mean and 1/std of a row held by the warp's lanes (as `warp_row_stats`, summed in another order).
template <typename T, typename A>
__device__ void vec_row_stats(const RowVecs<T> &r, int nv, int d, double eps, int lane, A *mean, A *rstd) {
  constexpr int V = RowVecs<T>::V;
  A s = 0;
#pragma unroll
  for (int k = 0; k < RowVecs<T>::K; ++k)
    if (lane + 32 * k < nv)
#pragma unroll
      for (int e = 0; e < V; ++e) s += ld(r.v[k].v[e]);
  const A m = warp_sum(s) / A(d);
  A s2 = 0;
#pragma unroll
  for (int k = 0; k < RowVecs<T>::K; ++k)
    if (lane + 32 * k < nv)
#pragma unroll
      for (int e = 0; e < V; ++e) {
        const A c = ld(r.v[k].v[e]) - m;
        s2 += c * c;
      }
  *mean = m;
  *rstd = A(1) / sqrt_(warp_sum(s2) / A(d) + A(eps));
}

// mean(g w) and mean(g w xhat) over a row held by the warp's lanes (x and g as `load_row` holds
// them): the two row means of the LayerNorm's input gradient.
template <typename T, typename A>
__device__ void vec_grad_means(const RowVecs<T> &rx, const RowVecs<T> &rg, const T *w, int nv, int d, int lane,
                               A mean, A rstd, A *m1, A *m2) {
  constexpr int V = RowVecs<T>::V;
  A s1 = 0, s2 = 0;
#pragma unroll
  for (int k = 0; k < RowVecs<T>::K; ++k) {
    if (lane + 32 * k >= nv) continue;
    const auto wv = vload(w + (lane + 32 * k) * V);
#pragma unroll
    for (int e = 0; e < V; ++e) {
      const A gw = ld(rg.v[k].v[e]) * ld(wv.v[e]);
      s1 += gw;
      s2 += gw * (ld(rx.v[k].v[e]) - mean) * rstd;
    }
  }
  *m1 = warp_sum(s1) / A(d);
  *m2 = warp_sum(s2) / A(d);
}

// The lanes' row (as `load_row` holds it) normalised in place, each value rounded to T:
// (x - mean) * rstd * w + b.
template <typename T, typename A>
__device__ __forceinline__ void vec_normalise(RowVecs<T> &r, const T *w, const T *b, int nv, int lane, A mean,
                                              A rstd) {
  constexpr int V = RowVecs<T>::V;
#pragma unroll
  for (int k = 0; k < RowVecs<T>::K; ++k) {
    if (lane + 32 * k >= nv) continue;
    const int j = (lane + 32 * k) * V;
    const auto wv = vload(w + j), bv = vload(b + j);
#pragma unroll
    for (int e = 0; e < V; ++e) st(&r.v[k].v[e], (ld(r.v[k].v[e]) - mean) * rstd * ld(wv.v[e]) + ld(bv.v[e]));
  }
}

// One warp per row (no block barriers: a row of a ViT's width is a few dozen elements per lane,
// and a block per row spent most of its time waiting at the reductions' barriers):
// y = (x - mean) / std * w + b. A warp past the last row returns as a whole.
template <typename T>
__device__ void layer_norm_fwd(const T *x, const T *w, const T *b, T *y, int rows, int d, double eps) {
  typedef typename Acc<T>::type A;
  constexpr int V = RowVecs<T>::V;
  const int row = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
  if (row >= rows) return;
  x += (size_t)row * d;
  y += (size_t)row * d;
  A mean, rstd;
  if (row_vectors<T>(d) && aligned(x) && aligned(w) && aligned(b) && aligned(y)) {
    const int nv = d / V;
    RowVecs<T> r;
    load_row(x, nv, lane, r);
    vec_row_stats(r, nv, d, eps, lane, &mean, &rstd);
    vec_normalise(r, w, b, nv, lane, mean, rstd);
#pragma unroll
    for (int k = 0; k < RowVecs<T>::K; ++k)
      if (lane + 32 * k < nv) vstore(y + (lane + 32 * k) * V, r.v[k]);
    return;
  }
  warp_row_stats(x, d, eps, lane, &mean, &rstd);
  for (int j = lane; j < d; j += 32) st(&y[j], (ld(x[j]) - mean) * rstd * ld(w[j]) + ld(b[j]));
}

// v rounded to T and widened back: a value as a tensor of T would hold it.
template <typename T> __device__ __forceinline__ typename Acc<T>::type rounded(typename Acc<T>::type v) {
  T t;
  st(&t, v);
  return ld(t);
}

// One warp per row: pre[row, q] = sum_j LN(x)[j] down[q, j] for q < rank, the normed row rounded
// to T first (as the norm's output tensor would be) and never written: a channel mixer's norm and
// down-projection in one read of the row (ops/norm_down.rs). Each run of per_weight rows has a
// down of its own (a token mixer's backward: one per image), one after another. On the vector
// path the normed row stays in the lanes' registers; otherwise each projection re-reads the row.
template <typename T>
__device__ void layer_norm_down(const T *x, const T *w, const T *b, const T *down, T *pre, int rows, int d,
                                int rank, int per_weight, double eps) {
  typedef typename Acc<T>::type A;
  constexpr int V = RowVecs<T>::V;
  const int row = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
  if (row >= rows) return;
  x += (size_t)row * d;
  pre += (size_t)row * rank;
  down += (size_t)(row / per_weight) * rank * d;
  A mean, rstd;
  if (row_vectors<T>(d) && aligned(x) && aligned(w) && aligned(b) && aligned(down)) {
    const int nv = d / V;
    RowVecs<T> r;
    load_row(x, nv, lane, r);
    vec_row_stats(r, nv, d, eps, lane, &mean, &rstd);
    vec_normalise(r, w, b, nv, lane, mean, rstd);
    for (int q = 0; q < rank; ++q) {
      A s = 0;
#pragma unroll
      for (int k = 0; k < RowVecs<T>::K; ++k) {
        if (lane + 32 * k >= nv) continue;
        const auto dv = vload(down + (size_t)q * d + (lane + 32 * k) * V);
#pragma unroll
        for (int e = 0; e < V; ++e) s += ld(r.v[k].v[e]) * ld(dv.v[e]);
      }
      s = warp_sum(s);
      if (lane == 0) st(&pre[q], s);
    }
    return;
  }
  warp_row_stats(x, d, eps, lane, &mean, &rstd);
  for (int q = 0; q < rank; ++q) {
    A s = 0;
    for (int j = lane; j < d; j += 32)
      s += rounded<T>((ld(x[j]) - mean) * rstd * ld(w[j]) + ld(b[j])) * ld(down[(size_t)q * d + j]);
    s = warp_sum(s);
    if (lane == 0) st(&pre[q], s);
  }
}

// One warp per row: dx = rstd * (g w - mean(g w) - xhat * mean(g w xhat)) (+ add, when has_add).
template <typename T>
__device__ void layer_norm_bwd_x(const T *x, const T *w, const T *g, const T *add, T *dx, int rows, int d,
                                 double eps, int has_add) {
  typedef typename Acc<T>::type A;
  constexpr int V = RowVecs<T>::V;
  const int row = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
  if (row >= rows) return;
  x += (size_t)row * d;
  g += (size_t)row * d;
  add += (size_t)row * d;
  dx += (size_t)row * d;
  A mean, rstd;
  if (row_vectors<T>(d) && aligned(x) && aligned(w) && aligned(g) && aligned(add) && aligned(dx)) {
    const int nv = d / V;
    RowVecs<T> rx, rg;
    load_row(x, nv, lane, rx);
    load_row(g, nv, lane, rg);
    vec_row_stats(rx, nv, d, eps, lane, &mean, &rstd);
    A m1, m2;
    vec_grad_means(rx, rg, w, nv, d, lane, mean, rstd, &m1, &m2);
#pragma unroll
    for (int k = 0; k < RowVecs<T>::K; ++k) {
      const int j = (lane + 32 * k) * V;
      if (lane + 32 * k >= nv) continue;
      const auto wv = vload(w + j);
      typename VecOf<T>::type av, o;
      if (has_add) av = vload(add + j);
#pragma unroll
      for (int e = 0; e < V; ++e) {
        const A xhat = (ld(rx.v[k].v[e]) - mean) * rstd;
        const A v = rstd * (ld(rg.v[k].v[e]) * ld(wv.v[e]) - m1 - xhat * m2);
        st(&o.v[e], has_add ? v + ld(av.v[e]) : v);
      }
      vstore(dx + j, o);
    }
    return;
  }
  warp_row_stats(x, d, eps, lane, &mean, &rstd);
  A s1 = 0, s2 = 0;
  for (int j = lane; j < d; j += 32) {
    const A gw = ld(g[j]) * ld(w[j]);
    s1 += gw;
    s2 += gw * (ld(x[j]) - mean) * rstd;
  }
  const A m1 = warp_sum(s1) / A(d);
  const A m2 = warp_sum(s2) / A(d);
  for (int j = lane; j < d; j += 32) {
    const A xhat = (ld(x[j]) - mean) * rstd;
    const A v = rstd * (ld(g[j]) * ld(w[j]) - m1 - xhat * m2);
    st(&dx[j], has_add ? v + ld(add[j]) : v);
  }
}

// out[j] = Σ_k partial[k·n + j] over the parts rows in order, by the block's threads: 16 bytes at
// a time where rows split into whole vectors (loads that do not wait on one another), loaded past
// L1 (other multiprocessors wrote them).
__device__ __forceinline__ void sum_rows(const float *partial, float *out, int parts, int n, int tid,
                                         int threads) {
  if ((n & 3) == 0) {
    for (int j = tid * 4; j < n; j += threads * 4) {
      float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 8
      for (int k = 0; k < parts; ++k) {
        const float4 p = __ldcg(reinterpret_cast<const float4 *>(partial + (size_t)k * n + j));
        s.x += p.x;
        s.y += p.y;
        s.z += p.z;
        s.w += p.w;
      }
      *reinterpret_cast<float4 *>(out + j) = s;
    }
    return;
  }
  for (int j = tid; j < n; j += threads) {
    float s = 0.f;
    for (int k = 0; k < parts; ++k) s += __ldcg(&partial[(size_t)k * n + j]);
    out[j] = s;
  }
}
__device__ __forceinline__ void sum_rows(const double *partial, double *out, int parts, int n, int tid,
                                         int threads) {
  for (int j = tid; j < n; j += threads) {
    double s = 0.0;
    for (int k = 0; k < parts; ++k) s += __ldcg(&partial[(size_t)k * n + j]);
    out[j] = s;
  }
}

// The end of a two-level sum in the same launch. Every block has written its part of `partial`
// ([parts, n]: row k is the sum over the k-th share of the input); the last block to finish sums
// the rows in order into out (a fixed order, so the result does not depend on which block
// finishes last) and re-arms the counter. `counter`: a zeroed u32 that such launches count their
// finished blocks in, one launch at a time (cuda.rs's `block_counter`: one per device and host
// thread, whose launches one stream orders). Called by every thread of every block, after the
// block's writes to `partial`. The fences around the count are thread 0's, after the barrier
// that follows every thread's writes, as cooperative groups' grid synchronisation orders them.
template <typename A>
__device__ void finish_partials(const A *partial, A *out, int parts, int n, unsigned int *counter) {
  __shared__ bool last;
  const int tid = threadIdx.y * blockDim.x + threadIdx.x, threads = blockDim.x * blockDim.y;
  __syncthreads();
  if (tid == 0) {
    __threadfence();
    last = atomicAdd(counter, 1u) == gridDim.x * gridDim.y - 1;
    __threadfence();
  }
  __syncthreads();
  if (!last) return;
  sum_rows(partial, out, parts, n, tid, threads);
  if (tid == 0) *counter = 0;
}

// A full-size [batch, tokens, W] operand that is a low-rank product, read where it is needed
// instead of from memory (ops/low_rank.rs): element (b, t, j) is
//   sum_r p[b pb + t pt + r pr] q[b qb + r qr + j],
// rows (b, t) of `tokens` tokens; q contiguous along j. cuda.rs's `LowRankArgs` is this struct
// (two pointers, five u32, an int, a FastDiv).
template <typename T> struct LowRankOf {
  const T *p, *q;
  uint32_t pb, pt, pr, qb, qr;
  int rank;
  FastDiv tokens;
};

// Columns j..j+K-1 of row `row` of a low-rank operand, summed over the rank in order in A; with K
// the vector width, q's K elements are one 16-byte load (the caller checks the alignment).
template <typename T, int K>
__device__ __forceinline__ void low_rank_m(typename Acc<T>::type (&m)[K], const LowRankOf<T> &lr, uint32_t row,
                                           uint32_t j) {
  typedef typename Acc<T>::type A;
#pragma unroll
  for (int k = 0; k < K; ++k) m[k] = A(0);
  uint32_t t;
  const uint32_t b = fdivmod(row, lr.tokens, &t);
  const T *p = lr.p + (uint64_t)b * lr.pb + (uint64_t)t * lr.pt;
  const T *q = lr.q + (uint64_t)b * lr.qb + j;
  for (int r = 0; r < lr.rank; ++r, p += lr.pr, q += lr.qr) {
    const A pr = ld(*p);
    if constexpr (K == VecOf<T>::n) {
      const auto qv = vload(q);
#pragma unroll
      for (int k = 0; k < K; ++k) m[k] += pr * ld(qv.v[k]);
    } else {
#pragma unroll
      for (int k = 0; k < K; ++k) m[k] += pr * ld(q[k]);
    }
  }
}

// Lane `lane`'s vectors of row `row` of a low-rank operand (as `load_row` holds a row), each
// element rounded to T as a GEMM writing the operand would round it.
template <typename T>
__device__ __forceinline__ void low_rank_row(const LowRankOf<T> &lr, uint32_t row, int nv, int lane, RowVecs<T> &r) {
  constexpr int V = RowVecs<T>::V;
#pragma unroll
  for (int k = 0; k < RowVecs<T>::K; ++k) {
    if (lane + 32 * k >= nv) continue;
    typename Acc<T>::type m[V];
    low_rank_m<T, V>(m, lr, row, (uint32_t)(lane + 32 * k) * V);
#pragma unroll
    for (int e = 0; e < V; ++e) st(&r.v[k].v[e], m[e]);
  }
}

// LayerNorm's input, scale and shift gradients in one pass over x and g, for rows the vector path
// takes (the caller checks): dx as layer_norm_bwd_x, by warps that take rows warp, warp + warps,
// ... of the grid and also sum g·xhat and g per column over their rows, each lane its own
// columns in registers. The block's warps then add theirs in warp order in shared memory into
// partial[block] = [Σ g·xhat ; Σ g] ([2, d]), and the last block sums the partials in block
// order into sums ([2, d]): a fixed summation order, no atomics on the values. Blocks of
// blockDim.x threads, 2·d accumulators of dynamic shared memory. With has_lr, g is the low-rank
// operand lr (LoSA's gradient at a mixer's normed input), computed row by row and never read
// from memory (g is then not read).
template <typename T>
__device__ void layer_norm_bwd(const T *x, const T *w, const T *g, const T *add, T *dx,
                               typename Acc<T>::type *partial, typename Acc<T>::type *sums, int rows,
                               int d, double eps, int has_add, unsigned int *counter, LowRankOf<T> lr,
                               int has_lr) {
  if constexpr (sizeof(T) > 4) return;  // never launched for f64 (see `row_vectors`)
  typedef typename Acc<T>::type A;
  constexpr int V = RowVecs<T>::V, K = RowVecs<T>::K;
  extern __shared__ __align__(16) unsigned char raw[];
  A *acc = reinterpret_cast<A *>(raw);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const int nv = d / V;
  A sgx[K][V], sg[K][V];
#pragma unroll
  for (int k = 0; k < K; ++k)
#pragma unroll
    for (int e = 0; e < V; ++e) sgx[k][e] = sg[k][e] = A(0);
  for (int64_t row = blockIdx.x * warps + warp; row < rows; row += (int64_t)gridDim.x * warps) {
    const size_t at = (size_t)row * d;
    RowVecs<T> rx, rg;
    load_row(x + at, nv, lane, rx);
    if (has_lr)
      low_rank_row(lr, (uint32_t)row, nv, lane, rg);
    else
      load_row(g + at, nv, lane, rg);
    A mean, rstd;
    vec_row_stats(rx, nv, d, eps, lane, &mean, &rstd);
    A m1, m2;
    vec_grad_means(rx, rg, w, nv, d, lane, mean, rstd, &m1, &m2);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int j = (lane + 32 * k) * V;
      if (lane + 32 * k >= nv) continue;
      const auto wv = vload(w + j);
      typename VecOf<T>::type av, o;
      if (has_add) av = vload(add + at + j);
#pragma unroll
      for (int e = 0; e < V; ++e) {
        const A gj = ld(rg.v[k].v[e]), xhat = (ld(rx.v[k].v[e]) - mean) * rstd;
        const A v = rstd * (gj * ld(wv.v[e]) - m1 - xhat * m2);
        st(&o.v[e], has_add ? v + ld(av.v[e]) : v);
        sgx[k][e] += gj * xhat;
        sg[k][e] += gj;
      }
      vstore(dx + at + j, o);
    }
  }
  for (int j = threadIdx.x; j < 2 * d; j += blockDim.x) acc[j] = A(0);
  __syncthreads();
  for (int turn = 0; turn < warps; ++turn) {
    if (warp == turn)
#pragma unroll
      for (int k = 0; k < K; ++k)
        if (lane + 32 * k < nv)
#pragma unroll
          for (int e = 0; e < V; ++e) {
            const int j = (lane + 32 * k) * V + e;
            acc[j] += sgx[k][e];
            acc[d + j] += sg[k][e];
          }
    __syncthreads();
  }
  A *out = partial + (size_t)blockIdx.x * 2 * d;
  for (int j = threadIdx.x; j < 2 * d; j += blockDim.x) out[j] = acc[j];
  finish_partials(partial, sums, gridDim.x, 2 * d, counter);
}

// Block k sums rows [k*per, min((k+1)*per, rows)) into partial[k] = [sum g xhat ; sum g] ([2, d]),
// each thread accumulating the columns j = threadIdx.x + i*blockDim.x (in shared memory, so no
// atomics and a fixed summation order). The caller sums the partials over k.
template <typename T>
__device__ void layer_norm_bwd_params(const T *x, const T *g, typename Acc<T>::type *partial, int rows,
                                      int per, int d, double eps) {
  typedef typename Acc<T>::type A;
  __shared__ A buf[32];
  extern __shared__ __align__(16) unsigned char raw[];
  A *acc = reinterpret_cast<A *>(raw);
  for (int j = threadIdx.x; j < 2 * d; j += blockDim.x) acc[j] = A(0);
  __syncthreads();
  const int start = blockIdx.x * per;
  const int end = min(start + per, rows);
  for (int r = start; r < end; ++r) {
    const T *xr = x + (size_t)r * d;
    const T *gr = g + (size_t)r * d;
    A mean, rstd;
    row_stats(xr, d, eps, buf, &mean, &rstd);
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
      const A gj = ld(gr[j]);
      acc[j] += gj * (ld(xr[j]) - mean) * rstd;
      acc[d + j] += gj;
    }
  }
  // acc[d + j] is updated by the owner of column j but written out by the owner of index d + j.
  __syncthreads();
  A *out = partial + (size_t)blockIdx.x * 2 * d;
  for (int j = threadIdx.x; j < 2 * d; j += blockDim.x) out[j] = acc[j];
}

// x viewed as [outer, channels, inner]; bias [channels]. y = gelu_erf(x + bias).
template <typename T>
__device__ void bias_gelu_fwd(const T *x, const T *bias, T *y, uint64_t n, FastDiv channels,
                              FastDiv inner) {
  typedef typename Acc<T>::type A;
  constexpr int V = VecOf<T>::n;
  const bool fast = n < FAST_DIV_LIMIT;
  const uint64_t first = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x, stride = (uint64_t)gridDim.x * blockDim.x;
  // The bias along the last dimension (a Linear's output): V consecutive elements share a row.
  if (inner.d == 1 && channels.d % V == 0 && aligned(x) && aligned(y) && aligned(bias)) {
    for (uint64_t j = first; j < n / V; j += stride) {
      const uint64_t i = j * V;
      const auto xv = vload(x + i), bv = vload(bias + channel_of(i, inner, channels, fast));
      typename VecOf<T>::type yv;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const A v = ld(xv.v[k]) + ld(bv.v[k]);
        st(&yv.v[k], gelu_(v));
      }
      vstore(y + i, yv);
    }
    return;
  }
  for (uint64_t i = first; i < n; i += stride) {
    const A v = ld(x[i]) + ld(bias[channel_of(i, inner, channels, fast)]);
    st(&y[i], gelu_(v));
  }
}

// dx = g * gelu_erf'(x + bias).
template <typename T>
__device__ void bias_gelu_bwd(const T *x, const T *bias, const T *g, T *dx, uint64_t n, FastDiv channels,
                              FastDiv inner) {
  typedef typename Acc<T>::type A;
  const bool fast = n < FAST_DIV_LIMIT;
  for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n;
       i += (uint64_t)gridDim.x * blockDim.x) {
    const A v = ld(x[i]) + ld(bias[channel_of(i, inner, channels, fast)]);
    st(&dx[i], ld(g[i]) * gelu_grad_(v));
  }
}

// bias_gelu_bwd along a middle dimension with the bias's gradient in the same launch (LoSA's
// token mixer, whose pre-activation is [batch, rank, width] with its bias along the rank): x
// viewed as [outer, channels, inner], dx = (g · mask, rounded to T as the mask's product was)
// · gelu_erf'(x + bias[c]) (the mask read only with has_mask) and sums[c] = Σ dx over outer and
// inner (the rounded values, as a sum of dx reads them): block (c, k) takes outer rows k·per ..
// of channel c, as channel_sums, into partial[k][c]; the last block sums the chunks in order.
// 1-D blocks of a multiple of 32 threads.
template <typename T>
__device__ void bias_gelu_bwd_sums(const T *x, const T *bias, const T *g, const T *mask, T *dx,
                                   typename Acc<T>::type *partial, typename Acc<T>::type *sums, int outer,
                                   int channels, int inner, int per, int has_mask, unsigned int *counter) {
  typedef typename Acc<T>::type A;
  __shared__ A buf[32];
  const int c = blockIdx.x, o0 = blockIdx.y * per, o1 = min(outer, o0 + per);
  const A b = ld(bias[c]);
  A s = 0;
  for (int o = o0; o < o1; ++o) {
    const size_t row = ((size_t)o * channels + c) * inner;
    for (int i = threadIdx.x; i < inner; i += blockDim.x) {
      const A up = has_mask ? rounded<T>(ld(g[row + i]) * ld(mask[row + i])) : ld(g[row + i]);
      const A d = rounded<T>(up * gelu_grad_(ld(x[row + i]) + b));
      st(&dx[row + i], d);
      s += d;
    }
  }
  s = block_sum(s, buf);
  if (threadIdx.x == 0) partial[(size_t)blockIdx.y * channels + c] = s;
  finish_partials(partial, sums, gridDim.y, channels, counter);
}

// out = a + m - minus + plus + bias[i % d]; `minus`, `plus` and `bias` are read only when their
// flag is set (the caller passes `a` in their place otherwise).
template <typename T>
__device__ void residual_fwd(const T *a, const T *m, const T *minus, const T *plus, const T *bias, T *out,
                             uint64_t n, FastDiv d, int has_minus, int has_plus, int has_bias) {
  typedef typename Acc<T>::type A;
  constexpr int V = VecOf<T>::n;
  const FastDiv one = {1, 1, 0};
  const bool fast = n < FAST_DIV_LIMIT;
  const uint64_t first = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x, stride = (uint64_t)gridDim.x * blockDim.x;
  if (n % V == 0 && (!has_bias || d.d % V == 0) && aligned(a) && aligned(m) && aligned(out) &&
      (!has_minus || aligned(minus)) && (!has_plus || aligned(plus)) && (!has_bias || aligned(bias))) {
    for (uint64_t j = first; j < n / V; j += stride) {
      const uint64_t i = j * V;
      const auto av = vload(a + i), mv = vload(m + i);
      typename VecOf<T>::type ov, sv, pv, bv;
      if (has_minus) sv = vload(minus + i);
      if (has_plus) pv = vload(plus + i);
      if (has_bias) bv = vload(bias + channel_of(i, one, d, fast));
#pragma unroll
      for (int k = 0; k < V; ++k) {
        A v = ld(av.v[k]) + ld(mv.v[k]);
        if (has_minus) v -= ld(sv.v[k]);
        if (has_plus) v += ld(pv.v[k]);
        if (has_bias) v += ld(bv.v[k]);
        st(&ov.v[k], v);
      }
      vstore(out + i, ov);
    }
    return;
  }
  for (uint64_t i = first; i < n; i += stride) {
    A v = ld(a[i]) + ld(m[i]);
    if (has_minus) v -= ld(minus[i]);
    if (has_plus) v += ld(plus[i]);
    if (has_bias) v += ld(bias[channel_of(i, one, d, fast)]);
    st(&out[i], v);
  }
}

// out = a + m - minus + plus + bias[j], m a low-rank product that is never written to memory (a
// LoSA mixer's up-projection of its rank-sized activation: writing m and reading it back were two
// of the mixer's full-size passes). Rows are (image b, token t) of width W:
// - channel: m[row, j] = sum_r act[row rank + r] w[j rank + r], w [W, rank] the same for every
//   row, so each block first stages it in shared memory as [rank][W] (dynamic, rank W elements):
//   a thread's V consecutive columns are then one vector load per r;
// - token: m[(b, t), j] = sum_r w[t rank + r] act[(b rank + r) W + j], act [batch, rank, W] read
//   in place (consecutive threads, consecutive columns).
// m is summed in A and added as residual_fwd adds its m; terms are read only when flagged.
// n = rows W < 2^31.
template <typename T>
__device__ void low_rank_residual(const T *a, const T *w, const T *act, const T *minus, const T *plus,
                                  const T *bias, T *out, uint32_t n, FastDiv width, FastDiv tokens, int rank,
                                  int channel, int has_minus, int has_plus, int has_bias) {
  typedef typename Acc<T>::type A;
  constexpr int V = VecOf<T>::n;
  extern __shared__ __align__(16) unsigned char raw[];
  T *ws = reinterpret_cast<T *>(raw);
  const uint32_t W = width.d;
  if (channel) {
    // w is [W, rank]: a thread per column j, its rank values in order (consecutive threads store
    // consecutive elements of each row of ws: no bank conflicts, and no division).
    for (uint32_t j = threadIdx.x; j < W; j += blockDim.x)
      for (int r = 0; r < rank; ++r) ws[(uint32_t)r * W + j] = w[j * rank + r];
    __syncthreads();
  }
  const uint32_t R = rank;
  const LowRankOf<T> lr = channel ? LowRankOf<T>{act, ws, tokens.d * R, R, 1, 0, W, rank, tokens}
                                  : LowRankOf<T>{w, act, 0, R, 1, R * W, W, rank, tokens};
  const uint32_t first = blockIdx.x * blockDim.x + threadIdx.x, stride = gridDim.x * blockDim.x;
  if (W % V == 0 && aligned(a) && aligned(out) && (channel || aligned(act)) && (!has_minus || aligned(minus)) &&
      (!has_plus || aligned(plus)) && (!has_bias || aligned(bias))) {
    for (uint32_t v = first; v < n / V; v += stride) {
      const uint32_t i = v * V, row = fdiv(i, width), j = i - row * W;
      // The full-size loads first, in flight while the product is summed.
      const auto av = vload(a + i);
      typename VecOf<T>::type ov, sv, pv, bv;
      if (has_minus) sv = vload(minus + i);
      if (has_plus) pv = vload(plus + i);
      if (has_bias) bv = vload(bias + j);
      A m[V];
      low_rank_m<T, V>(m, lr, row, j);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        A s = ld(av.v[k]) + m[k];
        if (has_minus) s -= ld(sv.v[k]);
        if (has_plus) s += ld(pv.v[k]);
        if (has_bias) s += ld(bv.v[k]);
        st(&ov.v[k], s);
      }
      vstore(out + i, ov);
    }
    return;
  }
  for (uint32_t i = first; i < n; i += stride) {
    const uint32_t row = fdiv(i, width), j = i - row * W;
    A m[1];
    low_rank_m<T, 1>(m, lr, row, j);
    A s = ld(a[i]) + m[0];
    if (has_minus) s -= ld(minus[i]);
    if (has_plus) s += ld(plus[i]);
    if (has_bias) s += ld(bias[j]);
    st(&out[i], s);
  }
}

// A channel mixer's backward from dm, the gradient at its output, up to its down-projection
// (ops/up_grads.rs). For each row r of dm [rows, W] (contiguous, 16-byte aligned, W whole vectors):
//   dpre[r, j] = gelu'(pre[r, j] + bd[j]) · mask[r, j] · Σ_c dm[r, c] up[c, j]      (j < rank)
// (the mask read only with has_mask) and, with has_sums, Σ_r dpre[r, j] (before rounding) and,
// with has_bu, Σ_r dm[r, c]: block x writes partial[x] = [Σ dm (W, with has_bu) ; Σ dpre (rank)]
// over its rows, and the last block sums the partials in block order into sums. Composed this
// was a GEMM, the mask's product, the activation's gradient and two column sums: dm read three
// times and four more launches.
// Layout: threadIdx.x is a vector of V columns (blockDim.x is the row's nv vectors rounded up to
// a warp; lanes past nv hold zeros), threadIdx.y one of blockDim.y groups of rows in flight,
// blockIdx.y a chunk of UP_RANKS ranks (this thread's columns of up for them held in registers),
// blockIdx.x a run of `per` rows. Each group takes UP_ROWS rows at a time, so that a lane's
// UP_ROWS × UP_RANKS partial dot products (32) are summed over its warp by a reduce-scatter
// (31 shuffles, after which lane l holds the warp's sum of product l: row l / UP_RANKS, rank
// l % UP_RANKS), then over the row's warps in warp order in shared memory by warp 0. Dynamic
// shared memory: 2 blockDim.y warps 32 + blockDim.y 32 + W floats.
#define UP_RANKS 8
#define UP_ROWS 4
template <typename T>
__device__ void channel_up_grads(const T *dm, const T *up, const T *pre, const T *bd, const T *mask, T *dpre,
                                 float *partial, float *sums, int rows, int W, int rank, int per,
                                 int has_mask, int has_sums, int has_bu, unsigned int *counter) {
  static_assert(UP_ROWS * UP_RANKS == 32, "one product per lane after the reduce-scatter");
  typedef float A;
  constexpr int V = VecOf<T>::n;
  extern __shared__ __align__(16) float upsh[];
  const int nv = W / V, v = threadIdx.x, lane = v & 31, warp = v >> 5, warps = blockDim.x >> 5;
  const int j0 = blockIdx.y * UP_RANKS;
  const bool mine = v < nv, sum_bu = has_sums && has_bu && blockIdx.y == 0;
  A wu[V][UP_RANKS];
#pragma unroll
  for (int k = 0; k < V; ++k)
#pragma unroll
    for (int jj = 0; jj < UP_RANKS; ++jj)
      wu[k][jj] = mine && j0 + jj < rank ? ld(up[(size_t)(v * V + k) * rank + j0 + jj]) : A(0);
  A bu[V];
#pragma unroll
  for (int k = 0; k < V; ++k) bu[k] = A(0);
  // Warp 0's lane l finishes product l of each step (row l / UP_RANKS, rank j = j0 + l %
  // UP_RANKS): its bias, and its sum of dpre over the rows it took.
  const int jl = j0 + lane % UP_RANKS;
  const A bdl = warp == 0 && jl < rank ? ld(bd[jl]) : A(0);
  A bd_sum = A(0);
  float *red = upsh, *sbd = upsh + 2 * blockDim.y * warps * 32, *sbu = sbd + blockDim.y * 32;
  const int r0 = blockIdx.x * per, r1 = min(rows, r0 + per), step = UP_ROWS * blockDim.y;
  int buf = 0;
  // Uniform over the block: every thread meets every barrier.
  for (int first = r0; first < r1; first += step, buf ^= 1) {
    const int base = first + threadIdx.y * UP_ROWS, rl = base + lane / UP_RANKS;
    // Warp 0's activation gradient (and mask) for its product, loaded and computed while the
    // dot products are summed.
    const bool own = warp == 0 && rl < r1 && jl < rank;
    const size_t at = (size_t)rl * rank + jl;
    A dg = A(0);
    if (own) {
      dg = gelu_grad_(ld(pre[at]) + bdl);
      if (has_mask) dg *= ld(mask[at]);
    }
    typename VecOf<T>::type x[UP_ROWS];
#pragma unroll
    for (int g = 0; g < UP_ROWS; ++g) {
      if (mine && base + g < r1) {
        x[g] = vload(dm + (size_t)(base + g) * W + v * V);
      } else {
#pragma unroll
        for (int k = 0; k < V; ++k) st(&x[g].v[k], A(0));
      }
    }
    A part[UP_ROWS * UP_RANKS];
#pragma unroll
    for (int g = 0; g < UP_ROWS; ++g) {
#pragma unroll
      for (int jj = 0; jj < UP_RANKS; ++jj) part[g * UP_RANKS + jj] = A(0);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const A d = ld(x[g].v[k]);
        bu[k] += d;
#pragma unroll
        for (int jj = 0; jj < UP_RANKS; ++jj) part[g * UP_RANKS + jj] += d * wu[k][jj];
      }
    }
    // Reduce-scatter: at step s a lane keeps the half of its 2s live sums that its bit s selects,
    // adding its partner's (lane ^ s) copy of the same ones, and sends the other half.
#pragma unroll
    for (int s = 16; s >= 1; s >>= 1) {
      const bool upper = lane & s;
#pragma unroll
      for (int i = 0; i < s; ++i) {
        const A send = upper ? part[i] : part[i + s], keep = upper ? part[i + s] : part[i];
        part[i] = keep + __shfl_xor_sync(0xffffffffu, send, s);
      }
    }
    // Double-buffered: warp 0 reads this buffer before it meets the next iteration's barrier,
    // which every warp passes before writing the buffer again.
    float *slot = red + (buf * blockDim.y + threadIdx.y) * warps * 32;
    slot[warp * 32 + lane] = part[0];
    __syncthreads();
    if (own) {
      A da = A(0);
      for (int w = 0; w < warps; ++w) da += slot[w * 32 + lane];
      const A val = dg * da;
      st(&dpre[at], val);
      bd_sum += val;
    }
  }
  if (!has_sums) return;
  float *row = partial + (size_t)blockIdx.x * ((has_bu ? W : 0) + rank);
  // Σ dm over the groups in order, through shared memory; the last group writes the partial.
  if (sum_bu) {
    for (int y = 0; y < (int)blockDim.y; ++y) {
      __syncthreads();
      if ((int)threadIdx.y == y && mine) {
#pragma unroll
        for (int k = 0; k < V; ++k) {
          const int c = v * V + k;
          const A s = y > 0 ? bu[k] + sbu[c] : bu[k];
          if (y + 1 < (int)blockDim.y) sbu[c] = s; else row[c] = s;
        }
      }
    }
  }
  // Σ dpre over the groups, then over each group's rows, in order.
  if (warp == 0) sbd[threadIdx.y * 32 + lane] = bd_sum;
  __syncthreads();
  if (threadIdx.y == 0 && v < UP_RANKS && j0 + v < rank) {
    A s = A(0);
    for (int y = 0; y < (int)blockDim.y; ++y)
#pragma unroll
      for (int g = 0; g < UP_ROWS; ++g) s += sbd[y * 32 + g * UP_RANKS + v];
    row[(has_bu ? W : 0) + j0 + v] = s;
  }
  finish_partials(partial, sums, gridDim.x, (has_bu ? W : 0) + rank, counter);
}

// Multi-tensor kernels (ops/cast.rs, ops/adamw.rs): the device pointers of up to MANY tensors
// travel in a table passed by value as a kernel parameter (no allocation, no copy to the device,
// as PyTorch's multi_tensor_apply), so that one launch serves dozens of small tensors. LoSA has
// 134 parameters of a few thousand elements; one launch per tensor cost more than their work.
// ends[k] counts the elements of tensors 0..=k: element i of the tensors' concatenation is
// element i - ends[k - 1] of the first tensor k with i < ends[k]. The table is a grid constant,
// so the kernels index it at run time without copying it into each thread's local memory.
#define MANY 48

__device__ __forceinline__ int tensor_of(const uint64_t *ends, int count, uint64_t i) {
  int lo = 0, hi = count - 1;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (i < ends[mid])
      hi = mid;
    else
      lo = mid + 1;
  }
  return lo;
}

struct CastTable {
  uint64_t src[MANY], dst[MANY], ends[MANY];
  int count;
};

// One rounding, as candle's CPU casts (round to nearest even).
__device__ __forceinline__ void cvt(float v, __nv_bfloat16 *d) { *d = __float2bfloat16(v); }
__device__ __forceinline__ void cvt(float v, __half *d) { *d = __float2half(v); }
__device__ __forceinline__ void cvt(float v, double *d) { *d = double(v); }
__device__ __forceinline__ void cvt(__nv_bfloat16 v, float *d) { *d = __bfloat162float(v); }
__device__ __forceinline__ void cvt(__half v, float *d) { *d = __half2float(v); }
__device__ __forceinline__ void cvt(double v, float *d) { *d = float(v); }

// Each of the table's tensors (of type S) cast to D at its destination.
template <typename S, typename D> __device__ void cast_many(const CastTable &t) {
  const uint64_t n = t.ends[t.count - 1];
  for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n;
       i += (uint64_t)gridDim.x * blockDim.x) {
    const int k = tensor_of(t.ends, t.count, i);
    const uint64_t j = i - (k ? t.ends[k - 1] : 0);
    cvt(reinterpret_cast<const S *>(t.src[k])[j], reinterpret_cast<D *>(t.dst[k]) + j);
  }
}

struct AdamWTable {
  uint64_t p[MANY], g[MANY], state[MANY], ends[MANY];
  double decay[MANY];
  int count;
};

// AdamW in place for the table's parameters (ops/adamw.rs), one pass: state = [m (n), v (n)],
// g scaled by clip[0]; m = m*b1 + g*(1-b1), v = v*b2 + (g*g)*(1-b2), each rounded to T, then
// p = p*decay - m / (sqrt(v)*inv_root_bc2 + eps) * step_size: the operations of the CPU path in
// its order (nvcc may fuse a multiply and an add into one rounding, so not bit-identical to it).
template <typename T>
__device__ void adamw_many(const AdamWTable &t, const double *clip, double b1, double b2,
                           double inv_root_bc2, double eps, double step_size) {
  typedef typename Acc<T>::type A;
  const A c = A(clip[0]), B1 = A(b1), B2 = A(b2), C1 = A(1.0 - b1), C2 = A(1.0 - b2);
  const A I = A(inv_root_bc2), E = A(eps), S = A(step_size);
  const uint64_t total = t.ends[t.count - 1];
  for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < total;
       i += (uint64_t)gridDim.x * blockDim.x) {
    const int k = tensor_of(t.ends, t.count, i);
    const uint64_t start = k ? t.ends[k - 1] : 0, n = t.ends[k] - start, j = i - start;
    T *p = reinterpret_cast<T *>(t.p[k]), *s = reinterpret_cast<T *>(t.state[k]);
    const A gi = ld(reinterpret_cast<const T *>(t.g[k])[j]) * c;
    T m, v;
    st(&m, ld(s[j]) * B1 + gi * C1);
    st(&v, ld(s[n + j]) * B2 + gi * gi * C2);
    s[j] = m;
    s[n + j] = v;
    const A denom = sqrt_(ld(v)) * I + E;
    st(&p[j], ld(p[j]) * A(t.decay[k]) - ld(m) / denom * S);
  }
}

// Column sums of a [rows, cols] matrix, chunk blockIdx.y of `per` rows, 32 columns per block:
// thread (c, r) sums every 8th row of the chunk in column c, then the 8 sums are added in order
// into partial[chunk]; the last block sums the chunks' partials in order into sums. Blocks of
// (32, 8) threads.
template <typename T>
__device__ void column_sums(const T *x, typename Acc<T>::type *partial, typename Acc<T>::type *sums, int rows,
                            int cols, int per, unsigned int *counter) {
  typedef typename Acc<T>::type A;
  __shared__ A buf[8][32];
  const int c = blockIdx.x * 32 + threadIdx.x;
  const int r0 = blockIdx.y * per, r1 = min(rows, r0 + per);
  A s = 0;
  if (c < cols)
    for (int r = r0 + threadIdx.y; r < r1; r += 8) s += ld(x[(uint64_t)r * cols + c]);
  buf[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    A t = 0;
    for (int k = 0; k < 8; ++k) t += buf[k][threadIdx.x];
    partial[(uint64_t)blockIdx.y * cols + c] = t;
  }
  finish_partials(partial, sums, gridDim.y, cols, counter);
}

// Sums of x viewed as [outer, channels, inner] over outer and inner, per channel: block (c, k)
// sums outer rows k·per .. of channel c (each row's inner elements contiguous) into
// partial[k][c]; the last block sums the chunks in order into sums. 1-D blocks of a multiple of
// 32 threads.
template <typename T>
__device__ void channel_sums(const T *x, typename Acc<T>::type *partial, typename Acc<T>::type *sums, int outer,
                             int channels, int inner, int per, unsigned int *counter) {
  typedef typename Acc<T>::type A;
  __shared__ A buf[32];
  const int c = blockIdx.x, o0 = blockIdx.y * per, o1 = min(outer, o0 + per);
  A s = 0;
  for (int o = o0; o < o1; ++o) {
    const T *row = x + ((size_t)o * channels + c) * inner;
    for (int i = threadIdx.x; i < inner; i += blockDim.x) s += ld(row[i]);
  }
  s = block_sum(s, buf);
  if (threadIdx.x == 0) partial[(size_t)blockIdx.y * channels + c] = s;
  finish_partials(partial, sums, gridDim.y, channels, counter);
}

// The mean over tokens [first, last) of each image's LayerNorm'd rows, for rows the vector path
// takes (the caller checks), x [batch, tokens, d]: out[b] = w · mean_t(x̂_bt) + bias (the affine
// commutes with the mean, so it is applied once, to the sums). Block (c, b) sums x̂ over the
// tokens first + c·warps + warp, first + (c + gridDim.x)·warps + warp, ... of image b, each lane
// its own columns in registers, then the block's warps add theirs in warp order in shared memory
// into partial[c][b] ([gridDim.x, batch, d]); the last of image b's blocks to finish (counted in
// counters[b], a zeroed u32 per image that it leaves zeroed again) sums the image's partials in
// order over c and applies the affine: a fixed summation order, no atomics on the values, and
// each image finished by its own block (one block finishing all images would read every partial
// alone). Blocks of blockDim.x threads, d accumulators of dynamic shared memory.
template <typename T>
__device__ void layer_norm_pool_fwd(const T *x, const float *w, const float *bias, float *partial, float *out,
                                    int tokens, int first, int last, int d, double eps,
                                    unsigned int *counters) {
  constexpr int V = RowVecs<T>::V, K = RowVecs<T>::K;
  extern __shared__ __align__(16) unsigned char raw[];
  __shared__ bool finishes;
  float *acc = reinterpret_cast<float *>(raw);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const int nv = d / V, batch = gridDim.y;
  float s[K][V];
#pragma unroll
  for (int k = 0; k < K; ++k)
#pragma unroll
    for (int e = 0; e < V; ++e) s[k][e] = 0.f;
  const T *image = x + (size_t)blockIdx.y * tokens * d;
  for (int t = first + blockIdx.x * warps + warp; t < last; t += gridDim.x * warps) {
    RowVecs<T> r;
    load_row(image + (size_t)t * d, nv, lane, r);
    float mean, rstd;
    vec_row_stats(r, nv, d, eps, lane, &mean, &rstd);
#pragma unroll
    for (int k = 0; k < K; ++k)
      if (lane + 32 * k < nv)
#pragma unroll
        for (int e = 0; e < V; ++e) s[k][e] += (ld(r.v[k].v[e]) - mean) * rstd;
  }
  for (int j = threadIdx.x; j < d; j += blockDim.x) acc[j] = 0.f;
  __syncthreads();
  for (int turn = 0; turn < warps; ++turn) {
    if (warp == turn)
#pragma unroll
      for (int k = 0; k < K; ++k)
        if (lane + 32 * k < nv)
#pragma unroll
          for (int e = 0; e < V; ++e) acc[(lane + 32 * k) * V + e] += s[k][e];
    __syncthreads();
  }
  float *mine = partial + ((size_t)blockIdx.x * batch + blockIdx.y) * d;
  for (int j = threadIdx.x; j < d; j += blockDim.x) mine[j] = acc[j];
  // The fences around the count as in `finish_partials`.
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    finishes = atomicAdd(&counters[blockIdx.y], 1u) == gridDim.x - 1;
    __threadfence();
  }
  __syncthreads();
  if (!finishes) return;
  const float scale = 1.f / float(last - first);
  for (int j = threadIdx.x; j < d; j += blockDim.x) {
    float sum = 0.f;
    for (int c = 0; c < gridDim.x; ++c) sum += __ldcg(&partial[((size_t)c * batch + blockIdx.y) * d + j]);
    out[(size_t)blockIdx.y * d + j] = sum * scale * w[j] + bias[j];
  }
  if (threadIdx.x == 0) counters[blockIdx.y] = 0;
}

// The input gradient of `layer_norm_pool_fwd` for g = d loss / d out ([batch, d], f32): one warp
// per row of x ([batch, tokens, d], rows the vector path takes). A row of a pooled token t gets
// the LayerNorm's input gradient for the output gradient g[b] / (last − first); the others 0.
template <typename T>
__device__ void layer_norm_pool_bwd(const T *x, const float *w, const float *g, T *dx, int rows, int tokens,
                                    int first, int last, int d, double eps) {
  constexpr int V = RowVecs<T>::V, K = RowVecs<T>::K;
  const int row = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
  if (row >= rows) return;
  const int t = row % tokens, nv = d / V;
  x += (size_t)row * d;
  dx += (size_t)row * d;
  if (t < first || t >= last) {
    typename VecOf<T>::type zero;
#pragma unroll
    for (int e = 0; e < V; ++e) st(&zero.v[e], 0.f);
    for (int k = lane; k < nv; k += 32) vstore(dx + (size_t)k * V, zero);
    return;
  }
  g += (size_t)(row / tokens) * d;
  const float scale = 1.f / float(last - first);
  RowVecs<T> r;
  load_row(x, nv, lane, r);
  float mean, rstd;
  vec_row_stats(r, nv, d, eps, lane, &mean, &rstd);
  float gw[K][V], s1 = 0.f, s2 = 0.f;
#pragma unroll
  for (int k = 0; k < K; ++k)
    if (lane + 32 * k < nv)
#pragma unroll
      for (int e = 0; e < V; ++e) {
        const int j = (lane + 32 * k) * V + e;
        gw[k][e] = g[j] * scale * w[j];
        s1 += gw[k][e];
        s2 += gw[k][e] * (ld(r.v[k].v[e]) - mean) * rstd;
      }
  const float m1 = warp_sum(s1) / float(d), m2 = warp_sum(s2) / float(d);
#pragma unroll
  for (int k = 0; k < K; ++k) {
    if (lane + 32 * k >= nv) continue;
    typename VecOf<T>::type o;
#pragma unroll
    for (int e = 0; e < V; ++e) {
      const float xhat = (ld(r.v[k].v[e]) - mean) * rstd;
      st(&o.v[e], rstd * (gw[k][e] - m1 - xhat * m2));
    }
    vstore(dx + (size_t)(lane + 32 * k) * V, o);
  }
}

// Rows up to this many elements per lane (32 · 12 = 384: attention over ViT-B/16's 197 tokens and
// ViT-H/14's 257) stay in registers through the softmax: one read and one exponential per element
// instead of three reads and two.
#define SOFTMAX_CACHED 12

// One warp per row of d: y = softmax(scale * x). A warp whose row is past the end returns as a
// whole, so the shuffles of the others stay full-warp.
template <typename T>
__device__ void softmax_fwd(const T *x, T *y, int rows, int d, double scale) {
  typedef typename Acc<T>::type A;
  const int row = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
  if (row >= rows) return;
  x += (size_t)row * d;
  y += (size_t)row * d;
  const A s = A(scale);
  if (d <= 32 * SOFTMAX_CACHED) {
    A v[SOFTMAX_CACHED];
    A m = -INFINITY;
#pragma unroll
    for (int k = 0; k < SOFTMAX_CACHED; ++k) {
      const int j = lane + 32 * k;
      v[k] = j < d ? ld(x[j]) * s : A(-INFINITY);
      m = max_(m, v[k]);
    }
    m = warp_max(m);
    A sum = 0;
#pragma unroll
    for (int k = 0; k < SOFTMAX_CACHED; ++k) {
      v[k] = lane + 32 * k < d ? exp_(v[k] - m) : A(0);
      sum += v[k];
    }
    const A inv = A(1) / warp_sum(sum);
#pragma unroll
    for (int k = 0; k < SOFTMAX_CACHED; ++k)
      if (lane + 32 * k < d) st(&y[lane + 32 * k], v[k] * inv);
    return;
  }
  A m = -INFINITY;
  for (int j = lane; j < d; j += 32) m = max_(m, ld(x[j]) * s);
  m = warp_max(m);
  A sum = 0;
  for (int j = lane; j < d; j += 32) sum += exp_(ld(x[j]) * s - m);
  const A inv = A(1) / warp_sum(sum);
  for (int j = lane; j < d; j += 32) st(&y[j], exp_(ld(x[j]) * s - m) * inv);
}

// One warp per row: dx = scale * y * (g - sum(g * y)).
template <typename T>
__device__ void softmax_bwd(const T *y, const T *g, T *dx, int rows, int d, double scale) {
  typedef typename Acc<T>::type A;
  const int row = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
  if (row >= rows) return;
  y += (size_t)row * d;
  g += (size_t)row * d;
  dx += (size_t)row * d;
  A dot = 0;
  for (int j = lane; j < d; j += 32) dot += ld(y[j]) * ld(g[j]);
  dot = warp_sum(dot);
  for (int j = lane; j < d; j += 32) st(&dx[j], A(scale) * ld(y[j]) * (ld(g[j]) - dot));
}

// w * v, or 0 where w is: a term with no weight drops out even where v is infinite (a logit of
// -inf without smoothing leaves the loss finite). A label out of range stays NaN either way (the
// CPU path refuses such labels before, so its version needs no NaN clause).
template <typename A> __device__ __forceinline__ A weighted(A w, A v) { return w == A(0) && !isnan(v) ? A(0) : w * v; }

// One row of logits by the 32 lanes of a warp: its max, log(sum(exp(z - max))) and mean of
// (max - z) (small terms, so that logits far from 0 do not cancel), which every lane gets.
template <typename T, typename A>
__device__ void logit_stats(const T *z, int classes, int lane, A *max, A *lse, A *gap) {
  A m = -INFINITY;
  for (int j = lane; j < classes; j += 32) m = max_(m, ld(z[j]));
  m = warp_max(m);
  A sum = 0, below = 0;
  for (int j = lane; j < classes; j += 32) {
    const A v = ld(z[j]);
    sum += exp_(v - m);
    below += m - v;
  }
  *max = m;
  *lse = log_(warp_sum(sum));
  *gap = warp_sum(below) / A(classes);
}

// The batch's mean cross-entropy with label smoothing, by one block: warp w takes rows w, w + W,
// ... (W warps) and sums their losses in that order, then thread 0 sums the warps' in order, so
// the result is the same in every run. A label out of range makes its row's loss NaN.
template <typename T>
__device__ void cross_entropy_fwd(const T *z, const uint32_t *labels, T *loss, int rows, int classes,
                                  double smoothing) {
  typedef typename Acc<T>::type A;
  __shared__ A per_warp[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  A acc = 0;
  for (int row = warp; row < rows; row += warps) {
    const T *zr = z + (size_t)row * classes;
    A m, lse, gap;
    logit_stats(zr, classes, lane, &m, &lse, &gap);
    const uint32_t y = labels[row];
    const A picked = y < (uint32_t)classes ? ld(zr[y]) : A(NAN);
    // lse - (1 - s) z_y - s mean(z) with the max taken out of each term, so large logits do not cancel.
    acc += lse + weighted(A(1.0 - smoothing), m - picked) + weighted(A(smoothing), gap);
  }
  if (lane == 0) per_warp[warp] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    A total = 0;
    for (int w = 0; w < warps; ++w) total += per_warp[w];
    st(loss, total / A(rows));
  }
}

// One warp per row: dz = g / rows * (softmax(z) - (1 - smoothing) onehot(y) - smoothing / classes),
// g the loss's gradient (one element). A label out of range makes its row NaN.
template <typename T>
__device__ void cross_entropy_bwd(const T *z, const uint32_t *labels, const T *g, T *dz, int rows,
                                  int classes, double smoothing) {
  typedef typename Acc<T>::type A;
  const int row = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
  if (row >= rows) return;
  z += (size_t)row * classes;
  dz += (size_t)row * classes;
  A m, lse, gap;
  logit_stats(z, classes, lane, &m, &lse, &gap);
  const uint32_t y = labels[row];
  const A scale = y < (uint32_t)classes ? ld(g[0]) / A(rows) : A(NAN);
  const A spread = A(smoothing / classes), keep = A(1.0 - smoothing);
  for (int j = lane; j < classes; j += 32) {
    const A target = (uint32_t)j == y ? keep + spread : spread;
    st(&dz[j], scale * (exp_(ld(z[j]) - m - lse) - target));
  }
}

// [batch, tokens, parts, heads, hd] <-> [parts, batch, heads, tokens, hd], one thread per element
// of the [parts, batch, heads, tokens, hd] side (parts: 3 for q, k, v; 1 for attention's output).
// split: y = x (+ bias [parts * heads * hd] when has_bias); merge (split = 0, bias unused): the
// inverse permutation.
template <typename T>
__device__ void split_heads(const T *src, const T *bias, T *dst, uint64_t n, FastDiv batch, FastDiv tokens,
                            int parts, FastDiv heads, FastDiv hd, int split, int has_bias) {
  typedef typename Acc<T>::type A;
  constexpr int V = VecOf<T>::n;
  const bool fast = n < FAST_DIV_LIMIT;
  const uint64_t first = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x, stride = (uint64_t)gridDim.x * blockDim.x;
  // Whole vectors of a head's hd elements, which lie consecutively on both sides.
  const bool vec = hd.d % V == 0 && aligned(src) && aligned(dst) && (!has_bias || aligned(bias));
  const uint64_t per = vec ? V : 1;
  for (uint64_t o = first * per; o < n; o += stride * per) {
    uint32_t e, t, h, b, s;
    if (fast) {
      uint32_t r = fdivmod((uint32_t)o, hd, &e);
      r = fdivmod(r, tokens, &t);
      r = fdivmod(r, heads, &h);
      s = fdivmod(r, batch, &b);
    } else {
      uint64_t r = o / hd.d;
      e = o % hd.d;
      t = r % tokens.d;
      r /= tokens.d;
      h = r % heads.d;
      r /= heads.d;
      b = r % batch.d;
      s = r / batch.d;
    }
    const uint64_t col = ((uint64_t)s * heads.d + h) * hd.d + e;
    const uint64_t i = ((uint64_t)b * tokens.d + t) * parts * heads.d * hd.d + col;
    if (vec) {
      if (!split) {
        vstore(dst + i, vload(src + o));
      } else if (has_bias) {
        const auto xv = vload(src + i), bv = vload(bias + col);
        typename VecOf<T>::type yv;
#pragma unroll
        for (int k = 0; k < V; ++k) st(&yv.v[k], ld(xv.v[k]) + ld(bv.v[k]));
        vstore(dst + o, yv);
      } else {
        vstore(dst + o, vload(src + i));
      }
    } else if (!split)
      dst[i] = src[o];
    else if (has_bias)
      st(&dst[o], ld(src[i]) + ld(bias[col]));
    else
      dst[o] = src[i];
  }
}

#define LOSA_OPS(T, S)                                                                             \
  extern "C" __global__ void layer_norm_fwd_##S(const T *x, const T *w, const T *b, T *y, int rows,  \
                                                int d, double eps) {                               \
    layer_norm_fwd<T>(x, w, b, y, rows, d, eps);                                                   \
  }                                                                                                \
  extern "C" __global__ void layer_norm_bwd_x_##S(const T *x, const T *w, const T *g, const T *add, \
                                                  T *dx, int rows, int d, double eps,              \
                                                  int has_add) {                                   \
    layer_norm_bwd_x<T>(x, w, g, add, dx, rows, d, eps, has_add);                                  \
  }                                                                                                \
  extern "C" __global__ void layer_norm_bwd_##S(const T *x, const T *w, const T *g, const T *add,   \
                                                T *dx, Acc<T>::type *partial, Acc<T>::type *sums,  \
                                                int rows, int d, double eps, int has_add,          \
                                                unsigned int *counter, LowRankOf<T> lr,            \
                                                int has_lr) {                                      \
    layer_norm_bwd<T>(x, w, g, add, dx, partial, sums, rows, d, eps, has_add, counter, lr, has_lr); \
  }                                                                                                \
  extern "C" __global__ void layer_norm_bwd_params_##S(const T *x, const T *g,                     \
                                                       Acc<T>::type *partial, int rows, int per,   \
                                                       int d, double eps) {                        \
    layer_norm_bwd_params<T>(x, g, partial, rows, per, d, eps);                                    \
  }                                                                                                \
  extern "C" __global__ void bias_gelu_fwd_##S(const T *x, const T *bias, T *y, uint64_t n,        \
                                               FastDiv channels, FastDiv inner) {                  \
    bias_gelu_fwd<T>(x, bias, y, n, channels, inner);                                              \
  }                                                                                                \
  extern "C" __global__ void bias_gelu_bwd_##S(const T *x, const T *bias, const T *g, T *dx,       \
                                               uint64_t n, FastDiv channels, FastDiv inner) {      \
    bias_gelu_bwd<T>(x, bias, g, dx, n, channels, inner);                                          \
  }                                                                                                \
  extern "C" __global__ void bias_gelu_bwd_sums_##S(const T *x, const T *bias, const T *g,         \
                                                    const T *mask, T *dx, Acc<T>::type *partial,   \
                                                    Acc<T>::type *sums, int outer, int channels,   \
                                                    int inner, int per, int has_mask,              \
                                                    unsigned int *counter) {                       \
    bias_gelu_bwd_sums<T>(x, bias, g, mask, dx, partial, sums, outer, channels, inner, per,        \
                          has_mask, counter);                                                      \
  }                                                                                                \
  extern "C" __global__ void residual_fwd_##S(const T *a, const T *m, const T *minus,              \
                                              const T *plus, const T *bias, T *out, uint64_t n,    \
                                              FastDiv d, int has_minus, int has_plus,              \
                                              int has_bias) {                                      \
    residual_fwd<T>(a, m, minus, plus, bias, out, n, d, has_minus, has_plus, has_bias);            \
  }                                                                                                \
  extern "C" __global__ void layer_norm_down_##S(const T *x, const T *w, const T *b, const T *down, \
                                                 T *pre, int rows, int d, int rank, int per_weight, \
                                                 double eps) {                                     \
    layer_norm_down<T>(x, w, b, down, pre, rows, d, rank, per_weight, eps);                        \
  }                                                                                                \
  /* 4 blocks of 256 per SM, as cuda.rs sizes the channel grid (64 registers a thread). */      \
  extern "C" __global__ void __launch_bounds__(256, 4) low_rank_residual_##S(const T *a, const T *w, const T *act,            \
                                                   const T *minus, const T *plus, const T *bias,   \
                                                   T *out, uint32_t n, FastDiv width,              \
                                                   FastDiv tokens, int rank, int channel,          \
                                                   int has_minus, int has_plus, int has_bias) {    \
    low_rank_residual<T>(a, w, act, minus, plus, bias, out, n, width, tokens, rank, channel,       \
                         has_minus, has_plus, has_bias);                                           \
  }                                                                                                \
  extern "C" __global__ void adamw_many_##S(const __grid_constant__ AdamWTable t,                  \
                                            const double *clip, double b1, double b2,              \
                                            double inv_root_bc2, double eps, double step_size) {   \
    adamw_many<T>(t, clip, b1, b2, inv_root_bc2, eps, step_size);                                  \
  }                                                                                                \
  extern "C" __global__ void column_sums_##S(const T *x, Acc<T>::type *partial, Acc<T>::type *sums, \
                                             int rows, int cols, int per, unsigned int *counter) { \
    column_sums<T>(x, partial, sums, rows, cols, per, counter);                                    \
  }                                                                                                \
  extern "C" __global__ void channel_sums_##S(const T *x, Acc<T>::type *partial, Acc<T>::type *sums,\
                                              int outer, int channels, int inner, int per,         \
                                              unsigned int *counter) {                             \
    channel_sums<T>(x, partial, sums, outer, channels, inner, per, counter);                       \
  }                                                                                                \
  extern "C" __global__ void cross_entropy_fwd_##S(const T *z, const uint32_t *labels, T *loss,     \
                                                   int rows, int classes, double smoothing) {      \
    cross_entropy_fwd<T>(z, labels, loss, rows, classes, smoothing);                               \
  }                                                                                                \
  extern "C" __global__ void cross_entropy_bwd_##S(const T *z, const uint32_t *labels, const T *g, \
                                                   T *dz, int rows, int classes, double smoothing) { \
    cross_entropy_bwd<T>(z, labels, g, dz, rows, classes, smoothing);                              \
  }                                                                                                \
  extern "C" __global__ void softmax_fwd_##S(const T *x, T *y, int rows, int d, double scale) {    \
    softmax_fwd<T>(x, y, rows, d, scale);                                                          \
  }                                                                                                \
  extern "C" __global__ void softmax_bwd_##S(const T *y, const T *g, T *dx, int rows, int d,       \
                                             double scale) {                                       \
    softmax_bwd<T>(y, g, dx, rows, d, scale);                                                      \
  }                                                                                                \
  extern "C" __global__ void split_heads_##S(const T *src, const T *bias, T *dst, uint64_t n,      \
                                             FastDiv batch, FastDiv tokens, int parts,             \
                                             FastDiv heads, FastDiv hd,                            \
                                             int split, int has_bias) {                            \
    split_heads<T>(src, bias, dst, n, batch, tokens, parts, heads, hd, split, has_bias);           \
  }

// The pooled LayerNorm: f32, f16 and bf16 rows (the vector path), f32 scale, shift and output.
#define NORM_POOL(T, S)                                                                            \
  extern "C" __global__ void layer_norm_pool_fwd_##S(const T *x, const float *w, const float *bias, \
                                                     float *partial, float *out, int tokens,      \
                                                     int first, int last, int d, double eps,      \
                                                     unsigned int *counters) {                    \
    layer_norm_pool_fwd<T>(x, w, bias, partial, out, tokens, first, last, d, eps, counters);       \
  }                                                                                                \
  extern "C" __global__ void layer_norm_pool_bwd_##S(const T *x, const float *w, const float *g,   \
                                                     T *dx, int rows, int tokens, int first,      \
                                                     int last, int d, double eps) {               \
    layer_norm_pool_bwd<T>(x, w, g, dx, rows, tokens, first, last, d, eps);                        \
  }
NORM_POOL(float, f32)
NORM_POOL(__half, f16)
NORM_POOL(__nv_bfloat16, bf16)

// A channel mixer's backward up to its down-projection: f32, f16 and bf16 (vector loads of dm).
// At most UP_THREADS threads a block, and room for their registers (about 150 each).
#define UP_THREADS 384
#define UP_GRADS(T, S)                                                                             \
  extern "C" __global__ void __launch_bounds__(UP_THREADS, 1)                                      \
      channel_up_grads_##S(const T *dm, const T *up, const T *pre, const T *bd, const T *mask,     \
                           T *dpre, float *partial, float *sums, int rows, int W, int rank,        \
                           int per, int has_mask, int has_sums, int has_bu,                       \
                           unsigned int *counter) {                                                \
    channel_up_grads<T>(dm, up, pre, bd, mask, dpre, partial, sums, rows, W, rank, per, has_mask,  \
                        has_sums, has_bu, counter);                                                \
  }
UP_GRADS(float, f32)
UP_GRADS(__half, f16)
UP_GRADS(__nv_bfloat16, bf16)

LOSA_OPS(float, f32)
LOSA_OPS(double, f64)
LOSA_OPS(__half, f16)
LOSA_OPS(__nv_bfloat16, bf16)

#define CAST_MANY(S, D, SN, DN)                                                                    \
  extern "C" __global__ void cast_many_##SN##_##DN(const __grid_constant__ CastTable t) {          \
    cast_many<S, D>(t);                                                                            \
  }
CAST_MANY(float, __nv_bfloat16, f32, bf16)
CAST_MANY(float, __half, f32, f16)
CAST_MANY(float, double, f32, f64)
CAST_MANY(__nv_bfloat16, float, bf16, f32)
CAST_MANY(__half, float, f16, f32)
CAST_MANY(double, float, f64, f32)

// Fills n bytes with 0xFF: NaN in every float type (ops::poison_outputs, a checking aid).
extern "C" __global__ void poison_bytes(unsigned char *p, uint64_t n) {
  for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x)
    p[i] = 0xFF;
}
