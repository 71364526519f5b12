"""Explanations for the shipped models (torch and captum; nothing else imports torch).

``gradcam``: Grad-CAM / Seg-Grad-CAM heatmaps on the study grid from the PyTorch twin of a
package's ONNX model, refused unless the twin agrees with it; the randomisation sanity check.
``nets``: the twins' architectures (``UNet2p5D``, ``TriPlanarNet``).
"""
