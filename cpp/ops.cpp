// One binding per ggml op builder, argument for argument. Shapes are ggml ne order; the caller
// (graphdsl/backends/ggml.py) has already checked what ggml would assert.
#include "common.hpp"

#include <pybind11/stl.h>

#include <array>

namespace gd {

using Ctx = std::shared_ptr<Context>;

static Tensor wrap(const Ctx & c, ggml_tensor * t) {
    if (!t) throw std::runtime_error("ggml returned a null tensor");
    return Tensor{t, c};
}

static ggml_tensor * opt(const std::optional<Tensor> & x) { return x ? raw(*x) : nullptr; }

template <ggml_tensor * (*F)(ggml_context *, ggml_tensor *)>
static void unary(py::module_ & m, const char * name, const char * doc) {
    m.def(name, [](Ctx c, const Tensor & a) { return wrap(c, F(fit(c), raw(a))); },
          py::arg("ctx"), py::arg("a"), doc);
}

template <ggml_tensor * (*F)(ggml_context *, ggml_tensor *, ggml_tensor *)>
static void binary(py::module_ & m, const char * name, const char * doc) {
    m.def(name, [](Ctx c, const Tensor & a, const Tensor & b) { return wrap(c, F(fit(c), raw(a), raw(b))); },
          py::arg("ctx"), py::arg("a"), py::arg("b"), doc);
}

void register_ops(py::module_ & root) {
    py::module_ m = root.def_submodule("ops", "ggml op builders (ggml ne order).");

    binary<ggml_add>(m, "add", "a + b, b repeated to a's shape");
    binary<ggml_sub>(m, "sub", "a - b, b repeated to a's shape");
    binary<ggml_mul>(m, "mul", "a * b, b repeated to a's shape");
    binary<ggml_div>(m, "div", "a / b, b repeated to a's shape");
    binary<ggml_mul_mat>(m, "mul_mat", "ggml_mul_mat(a[k, n], b[k, m]) -> [n, m]");
    binary<ggml_get_rows>(m, "get_rows", "rows of a (any type) picked by i32 indices b -> f32");

    unary<ggml_neg>(m, "neg", "-x");
    unary<ggml_sqr>(m, "sqr", "x * x");
    unary<ggml_sqrt>(m, "sqrt", "sqrt(x)");
    unary<ggml_exp>(m, "exp", "exp(x)");
    unary<ggml_tanh>(m, "tanh", "tanh(x)");
    unary<ggml_relu>(m, "relu", "max(x, 0)");
    unary<ggml_gelu>(m, "gelu", "tanh-approximate GELU (f16 table on CPU)");
    unary<ggml_gelu_erf>(m, "gelu_erf", "exact GELU, 0.5 x (1 + erf(x / sqrt 2))");
    unary<ggml_gelu_quick>(m, "gelu_quick", "x * sigmoid(1.702 x) (f16 table on CPU)");
    unary<ggml_silu>(m, "silu", "x * sigmoid(x)");
    unary<ggml_sigmoid>(m, "sigmoid", "1 / (1 + exp(-x))");
    unary<ggml_cont>(m, "cont", "contiguous copy");
    unary<ggml_transpose>(m, "transpose", "swap ne0 and ne1 (a view)");
    unary<ggml_sum_rows>(m, "sum_rows", "sum over ne0 -> ne0 = 1");
    unary<ggml_mean>(m, "mean", "mean over ne0 -> ne0 = 1");
    unary<ggml_argmax>(m, "argmax", "argmax over ne0 of a 2-D tensor -> i32 [ne1]");

    m.def("scale_bias", [](Ctx c, const Tensor & a, float s, float b) {
        return wrap(c, ggml_scale_bias(fit(c), raw(a), s, b));
    }, py::arg("ctx"), py::arg("a"), py::arg("s"), py::arg("b"), "s * x + b");
    m.def("norm", [](Ctx c, const Tensor & a, float eps) { return wrap(c, ggml_norm(fit(c), raw(a), eps)); },
          py::arg("ctx"), py::arg("a"), py::arg("eps"), "(x - mean) / sqrt(var + eps) over ne0");
    m.def("rms_norm", [](Ctx c, const Tensor & a, float eps) { return wrap(c, ggml_rms_norm(fit(c), raw(a), eps)); },
          py::arg("ctx"), py::arg("a"), py::arg("eps"), "x / sqrt(mean(x^2) + eps) over ne0");
    m.def("soft_max_ext", [](Ctx c, const Tensor & a, std::optional<Tensor> mask, float scale, float max_bias) {
        return wrap(c, ggml_soft_max_ext(fit(c), raw(a), opt(mask), scale, max_bias));
    }, py::arg("ctx"), py::arg("a"), py::arg("mask"), py::arg("scale"), py::arg("max_bias"),
       "softmax(a * scale + mask) over ne0");
    m.def("reshape_4d", [](Ctx c, const Tensor & a, int64_t n0, int64_t n1, int64_t n2, int64_t n3) {
        return wrap(c, ggml_reshape_4d(fit(c), raw(a), n0, n1, n2, n3));
    }, py::arg("ctx"), py::arg("a"), py::arg("n0"), py::arg("n1"), py::arg("n2"), py::arg("n3"));
    m.def("view_4d", [](Ctx c, const Tensor & a, int64_t n0, int64_t n1, int64_t n2, int64_t n3,
                        size_t nb1, size_t nb2, size_t nb3, size_t offset) {
        return wrap(c, ggml_view_4d(fit(c), raw(a), n0, n1, n2, n3, nb1, nb2, nb3, offset));
    }, py::arg("ctx"), py::arg("a"), py::arg("n0"), py::arg("n1"), py::arg("n2"), py::arg("n3"), py::arg("nb1"),
       py::arg("nb2"), py::arg("nb3"), py::arg("offset"));
    m.def("permute", [](Ctx c, const Tensor & a, int a0, int a1, int a2, int a3) {
        return wrap(c, ggml_permute(fit(c), raw(a), a0, a1, a2, a3));
    }, py::arg("ctx"), py::arg("a"), py::arg("a0"), py::arg("a1"), py::arg("a2"), py::arg("a3"),
       "axis i of a moves to position a_i");
    m.def("concat", [](Ctx c, const Tensor & a, const Tensor & b, int dim) {
        return wrap(c, ggml_concat(fit(c), raw(a), raw(b), dim));
    }, py::arg("ctx"), py::arg("a"), py::arg("b"), py::arg("dim"));
    m.def("pad_ext", [](Ctx c, const Tensor & a, int l0, int r0, int l1, int r1, int l2, int r2, int l3, int r3) {
        return wrap(c, ggml_pad_ext(fit(c), raw(a), l0, r0, l1, r1, l2, r2, l3, r3));
    }, py::arg("ctx"), py::arg("a"), py::arg("l0"), py::arg("r0"), py::arg("l1"), py::arg("r1"), py::arg("l2"),
       py::arg("r2"), py::arg("l3"), py::arg("r3"), "zero padding, left and right per dimension");
    m.def("repeat_4d", [](Ctx c, const Tensor & a, int64_t n0, int64_t n1, int64_t n2, int64_t n3) {
        return wrap(c, ggml_repeat_4d(fit(c), raw(a), n0, n1, n2, n3));
    }, py::arg("ctx"), py::arg("a"), py::arg("n0"), py::arg("n1"), py::arg("n2"), py::arg("n3"));
    m.def("cast", [](Ctx c, const Tensor & a, int type) {
        return wrap(c, ggml_cast(fit(c), raw(a), (ggml_type) type));
    }, py::arg("ctx"), py::arg("a"), py::arg("type"));
    m.def("im2col", [](Ctx c, const Tensor & k, const Tensor & x, int s0, int s1, int p0, int p1, int d0, int d1,
                       bool is_2d, int dst_type) {
        return wrap(c, ggml_im2col(fit(c), raw(k), raw(x), s0, s1, p0, p1, d0, d1, is_2d, (ggml_type) dst_type));
    }, py::arg("ctx"), py::arg("k"), py::arg("x"), py::arg("s0"), py::arg("s1"), py::arg("p0"), py::arg("p1"),
       py::arg("d0"), py::arg("d1"), py::arg("is_2d"), py::arg("dst_type"),
       "unfold patches; dst_type f16 is ggml's fast path, f32 keeps full precision");
    m.def("pool_2d", [](Ctx c, const Tensor & a, int op, int k0, int k1, int s0, int s1, float p0, float p1) {
        return wrap(c, ggml_pool_2d(fit(c), raw(a), (ggml_op_pool) op, k0, k1, s0, s1, p0, p1));
    }, py::arg("ctx"), py::arg("a"), py::arg("op"), py::arg("k0"), py::arg("k1"), py::arg("s0"), py::arg("s1"),
       py::arg("p0"), py::arg("p1"), "op 0 = max, 1 = avg");
    m.def("flash_attn_ext", [](Ctx c, const Tensor & q, const Tensor & k, const Tensor & v, std::optional<Tensor> mask,
                               float scale, float max_bias, float softcap, bool prec_f32) {
        ggml_tensor * r = ggml_flash_attn_ext(fit(c), raw(q), raw(k), raw(v), opt(mask), scale, max_bias, softcap);
        if (prec_f32) ggml_flash_attn_ext_set_prec(r, GGML_PREC_F32);
        return wrap(c, r);
    }, py::arg("ctx"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("mask"), py::arg("scale"),
       py::arg("max_bias"), py::arg("softcap"), py::arg("prec_f32"),
       "fused attention; result ne = [d_v, n_head, n_q, batch]");
    m.def("rope_ext", [](Ctx c, const Tensor & a, const Tensor & pos, std::optional<Tensor> freq, int n_dims, int mode,
                         int n_ctx_orig, float freq_base, float freq_scale, float ext_factor, float attn_factor,
                         float beta_fast, float beta_slow) {
        return wrap(c, ggml_rope_ext(fit(c), raw(a), raw(pos), opt(freq), n_dims, mode, n_ctx_orig, freq_base,
                                     freq_scale, ext_factor, attn_factor, beta_fast, beta_slow));
    }, py::arg("ctx"), py::arg("a"), py::arg("pos"), py::arg("freq"), py::arg("n_dims"), py::arg("mode"),
       py::arg("n_ctx_orig"), py::arg("freq_base"), py::arg("freq_scale"), py::arg("ext_factor"),
       py::arg("attn_factor"), py::arg("beta_fast"), py::arg("beta_slow"));
    m.def("rope_multi", [](Ctx c, const Tensor & a, const Tensor & pos, std::optional<Tensor> freq, int n_dims,
                           std::array<int, GGML_MROPE_SECTIONS> sections, int mode, int n_ctx_orig, float freq_base,
                           float freq_scale, float ext_factor, float attn_factor, float beta_fast, float beta_slow) {
        return wrap(c, ggml_rope_multi(fit(c), raw(a), raw(pos), opt(freq), n_dims, sections.data(), mode, n_ctx_orig,
                                       freq_base, freq_scale, ext_factor, attn_factor, beta_fast, beta_slow));
    }, py::arg("ctx"), py::arg("a"), py::arg("pos"), py::arg("freq"), py::arg("n_dims"), py::arg("sections"),
       py::arg("mode"), py::arg("n_ctx_orig"), py::arg("freq_base"), py::arg("freq_scale"), py::arg("ext_factor"),
       py::arg("attn_factor"), py::arg("beta_fast"), py::arg("beta_slow"),
       "multi-section RoPE (mode MROPE / VISION / IMROPE); pos holds 4 rows of ne2 positions, sections count pairs");
    m.def("mul_mat_set_prec_f32", [](Tensor & t) {
        if (raw(t)->op != GGML_OP_MUL_MAT) throw std::invalid_argument("mul_mat_set_prec_f32 needs a MUL_MAT tensor");
        ggml_mul_mat_set_prec(raw(t), GGML_PREC_F32);
    }, py::arg("t"), "accumulate this product in f32 (GGML_PREC_F32); CUDA's default for f16 weights is f16");
}

}  // namespace gd
