"""ONNX files in: an ONNX graph imported as a torch.fx graph (:mod:`surgeon.onnxin.importer`,
:mod:`surgeon.onnxin.ops`), slimmed by the same pipeline as any model, and written back as a
slim ONNX file checked against the original (:mod:`surgeon.onnxin.job`)."""
