#!/usr/bin/env python3
"""Runs an ONNX model with Python's onnxruntime on a raw float32 tensor, for the Rust tests.

Usage: ort_reference.py MODEL INPUT_NAME OUTPUT_NAME C H W TENSOR.f32 OUT.f32
"""
import sys

import numpy as np
import onnxruntime as ort

model, input_name, output_name = sys.argv[1:4]
c, h, w = (int(v) for v in sys.argv[4:7])
tensor = np.fromfile(sys.argv[7], dtype="<f4").reshape(1, c, h, w)
session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
(out,) = session.run([output_name], {input_name: tensor})
np.ascontiguousarray(out, dtype="<f4").tofile(sys.argv[8])
