"""Project-written stand-in for transformers' `tests/exporters/test_export.py` (not vendored: the transformers
5.23.0 sdist on PyPI does not ship tests/exporters/).

`ModelTesterMixin` inherits `ExportTesterMixin`; upstream it adds the export tests (torch.export / ONNX / ExecuTorch /
OpenVINO / TensorRT back ends). Here it is an empty base class, so no export test runs: DEEM's conformance suite does
not cover exporting."""


class ExportTesterMixin:
    pass
