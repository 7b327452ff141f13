// Python bindings of bastion's CPU kernels (built at first use by cpu_kernels/build.py).
#include <torch/extension.h>

#include "decode_step.h"
#include "dot.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "bastion CPU kernels: small-batch linear layers and the one-sequence decode step";
  m.attr("uses_dpbf16") = bool(BASTION_DPBF16);
  m.def("linear", &bastion::linear, "y = x W^T (+ float32 bias) for a few rows of x",
        pybind11::arg("x"), pybind11::arg("weight"), pybind11::arg("bias") = pybind11::none());
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
  pybind11::class_<bastion::Decoder, std::shared_ptr<bastion::Decoder>>(m, "Decoder")
      .def("step", &bastion::Decoder::step, pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("make_decoder", &bastion::make_decoder);
}
