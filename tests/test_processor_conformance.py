"""transformers' common processor tests (`ProcessorTesterMixin`) run on DeemProcessor and the tiny processor of
hub_configs/deem-tiny (issue 11), wired the way transformers' tests/models/llava/test_processing_llava.py wires
LlavaProcessor: `processor_class`, a checkpoint to load (`model_id`, here a local folder, so it runs offline) and
`prepare_processor_dict`.

Provenance: tests/transformers_common/test_processing_common.py is transformers 5.23.0's own file, unmodified, from
its PyPI sdist (transformers-5.23.0.tar.gz, sha256 19d647a4d5d903a7c644ca5cde2d86efc3dde7d8c687ae7988806ff2205efa71;
the file's sha256 is 364068a33265d30f2d2efb489f215afa2677ad91d9592ea48e576b07d918ad3b). It imports `url_to_local_path`
from transformers' repository script utils/fetch_hub_objects_for_ci.py, which the sdist does not ship; the stand-in
registered below behaves like it (a URL's file name if that file was fetched beforehand, else the URL), with the one
image the tests use made locally instead of downloaded.

Skips: the mixin skips by itself what DEEM has no component or hook for (videos, audio, tools in the template,
`_get_num_multimodal_tokens`); the overrides below skip, each with its reason, what cannot apply to DEEM. None is
xfailed.
"""

import atexit
import shutil
import sys
import tempfile
import types
import unittest
from pathlib import Path

import numpy as np
from PIL import Image

from processing import DeemProcessor

TINY = Path(__file__).resolve().parents[1] / "hub_configs" / "deem-tiny"
_FETCHED = Path(tempfile.mkdtemp(prefix="deem-processor-conformance-"))
atexit.register(shutil.rmtree, _FETCHED, True)
# The image behind the mixin's image URL (coco_sample.png), made here: no network.
Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(_FETCHED / "coco_sample.png")


def url_to_local_path(url: str, return_url_if_not_found: bool = True) -> str:
    """transformers' `fetch_hub_objects_for_ci.url_to_local_path`, looking in this module's folder of fetched files."""
    local = _FETCHED / url.split("/")[-1]
    return str(local) if local.exists() or not return_url_if_not_found else url


_stand_in = types.ModuleType("fetch_hub_objects_for_ci")
_stand_in.url_to_local_path = url_to_local_path
sys.modules.setdefault("fetch_hub_objects_for_ci", _stand_in)

from transformers_common.test_processing_common import ProcessorTesterMixin  # noqa: E402


class DeemProcessorConformanceTest(ProcessorTesterMixin, unittest.TestCase):
    processor_class = DeemProcessor
    model_id = str(TINY)
    # An image is 78 tokens here (start + 77 placeholders), so the mixin's 76 cannot hold the test texts (88 and 97
    # tokens with the tiny tokenizer): padding to max_length must stay above them, below nothing else.
    images_unstructured_max_length = 112

    @staticmethod
    def prepare_processor_dict() -> dict:
        return {"num_image_tokens": 77, "image_start_token": "<|startofimage|>",
                "image_placeholder_token": "<|sniffer|>"}
