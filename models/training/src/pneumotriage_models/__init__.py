"""pneumotriage's model tooling: synthetic chest radiographs with exact pneumothorax masks, the
SIIM-ACR loader and RLE codec, training and ONNX export of the classifier/segmenter cascade,
the model manifest, and evaluation of ONNX models with onnxruntime.

Only `train` and `export` need PyTorch; everything else runs with numpy, pydicom and
onnxruntime, which is what CI installs.
"""

__version__ = "0.1.0"

# Every output that names the demo models carries this.
DEMO_NOTICE = "demo: synthetic data, not for clinical use"
