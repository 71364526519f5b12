"""Local AI: model packages (``package``), the ONNX Runtime segmentation and classification runtimes.

No network at run time: ONNX Runtime's telemetry is switched off here, before any module of
this package can import onnxruntime (it reads ``ORT_DISABLE_TELEMETRY`` at import).
"""

import os as _os

_os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
