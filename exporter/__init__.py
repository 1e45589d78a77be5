"""Export: torch -> ONNX with every zero kept, verified against torch, stored compactly.

One module per concern: ``onnx_export`` (torch -> ONNX), ``simplify`` (onnxsim behind a
guard), ``audit`` (zeros counted on both sides), ``parity`` (torch vs onnxruntime),
``storage`` (sparse initializers); ``stage`` exports a run directory. torch, timm and onnx
load only when a stage runs, so ``import mixprune.exporter`` stays light.
"""
