// Python bindings of bastion's CPU kernels (built at first use by cpu_kernels/build.py).
#include <torch/extension.h>

#include "decode_step.h"
#include "dot.h"
#include "elementwise.h"
#include "linear.h"
#include "paged_attention.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "bastion CPU kernels: blocked bf16 and int8 linear layers, the one-sequence decode step, "
            "attention over the paged KV cache";
  m.attr("uses_dpbf16") = bool(BASTION_DPBF16);
  m.attr("uses_vnni") = bool(BASTION_VNNI);
  m.def("linear_blocked", &bastion::linear_blocked, "y = x W^T (+ float32 bias), W bf16 blocked [N/16, K/2, 16, 2]",
        pybind11::arg("x"), pybind11::arg("packed"), pybind11::arg("out_features"),
        pybind11::arg("bias") = pybind11::none());
  m.def("linear_int8", &bastion::linear_int8, "y = (x q^T) * scale (+ bias) for a few rows of x, q int8",
        pybind11::arg("x"), pybind11::arg("q"), pybind11::arg("scale"), pybind11::arg("bias") = pybind11::none());
  m.def("rms_norm", &bastion::rms_norm, "weight * rms_norm(x (+ residual)), and x + residual when given",
        pybind11::arg("x"), pybind11::arg("weight"), pybind11::arg("eps"), pybind11::arg("residual") = pybind11::none(),
        pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("silu_mul", &bastion::silu_mul, "silu(gate) * up for x = [gate, up] on its last dimension", pybind11::arg("x"),
        pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("paged_attention", &bastion::paged_attention,
        "causal attention of a step's new tokens (decodes and prefill chunks) over their sequences' blocks of "
        "the paged KV cache, read in place",
        pybind11::arg("q"), pybind11::arg("k_cache"), pybind11::arg("v_cache"), pybind11::arg("block_tables"),
        pybind11::arg("context_lens"), pybind11::arg("query_starts"), pybind11::arg("scale"),
        pybind11::call_guard<pybind11::gil_scoped_release>());
  pybind11::class_<bastion::DecoderShape>(m, "DecoderShape")
      .def(pybind11::init<>())
      .def_readwrite("hidden", &bastion::DecoderShape::hidden)
      .def_readwrite("intermediate", &bastion::DecoderShape::intermediate)
      .def_readwrite("num_heads", &bastion::DecoderShape::num_heads)
      .def_readwrite("num_kv_heads", &bastion::DecoderShape::num_kv_heads)
      .def_readwrite("head_dim", &bastion::DecoderShape::head_dim)
      .def_readwrite("block_size", &bastion::DecoderShape::block_size)
      .def_readwrite("eps", &bastion::DecoderShape::eps)
      .def_readwrite("scale", &bastion::DecoderShape::scale);
  pybind11::class_<bastion::DecoderWeights>(m, "DecoderWeights")
      .def(pybind11::init<>())
      .def_readwrite("embed", &bastion::DecoderWeights::embed)
      .def_readwrite("final_norm", &bastion::DecoderWeights::final_norm)
      .def_readwrite("cos", &bastion::DecoderWeights::cos)
      .def_readwrite("sin", &bastion::DecoderWeights::sin)
      .def_readwrite("norm1", &bastion::DecoderWeights::norm1)
      .def_readwrite("norm2", &bastion::DecoderWeights::norm2)
      .def_readwrite("q_norm", &bastion::DecoderWeights::q_norm)
      .def_readwrite("k_norm", &bastion::DecoderWeights::k_norm)
      .def_readwrite("qkv_bias", &bastion::DecoderWeights::qkv_bias)
      .def_readwrite("qkv", &bastion::DecoderWeights::qkv)
      .def_readwrite("o", &bastion::DecoderWeights::o)
      .def_readwrite("gate_up", &bastion::DecoderWeights::gate_up)
      .def_readwrite("down", &bastion::DecoderWeights::down)
      .def_readwrite("qkv_scale", &bastion::DecoderWeights::qkv_scale)
      .def_readwrite("o_scale", &bastion::DecoderWeights::o_scale)
      .def_readwrite("gate_up_scale", &bastion::DecoderWeights::gate_up_scale)
      .def_readwrite("down_scale", &bastion::DecoderWeights::down_scale)
      .def_readwrite("k_cache", &bastion::DecoderWeights::k_cache)
      .def_readwrite("v_cache", &bastion::DecoderWeights::v_cache);
  pybind11::class_<bastion::Decoder, std::shared_ptr<bastion::Decoder>>(m, "Decoder")
      .def("step", &bastion::Decoder::step, pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("make_decoder", &bastion::make_decoder);
}
