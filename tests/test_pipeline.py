"""pipeline("image-text-to-text") and AutoProcessor on a saved tiny DEEM, in a process outside the repository."""

from pathlib import Path

import numpy as np
import torch
from isolated import run_isolated
from PIL import Image

from modeling_deem import DeemConfig, DeemForConditionalGeneration
from processing import DeemProcessor

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "hub_configs" / "deem-tiny"


def test_pipeline_and_auto_processor_as_remote_code(tmp_path):
    torch.manual_seed(0)
    folder = tmp_path / "deem-tiny"
    model = DeemForConditionalGeneration(DeemConfig.from_pretrained(TINY)).eval()
    processor = DeemProcessor.from_pretrained(TINY)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8))
    image.save(tmp_path / "picture.png")

    # The expected answer, computed here with the in-repo classes.
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}],
        add_generation_prompt=True, tokenize=False)
    inputs = processor(text=prompt, images=Image.open(tmp_path / "picture.png"))
    expected = processor.decode_new_tokens(model.generate(**inputs, max_new_tokens=6, do_sample=False),
                                           inputs["input_ids"].shape[1])[0]

    work = tmp_path / "elsewhere"
    work.mkdir()
    out = run_isolated(f"""
        import json
        from PIL import Image
        from transformers import AutoProcessor, pipeline
        folder = {str(folder)!r}
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        assert type(processor).__name__ == "DeemProcessor", type(processor)
        assert type(processor.image_processor).__name__ == "DeemImageProcessor"
        assert processor.image_token_id == {processor.image_token_id}
        pipe = pipeline("image-text-to-text", model=folder, trust_remote_code=True)
        image = Image.open({str(tmp_path / "picture.png")!r})
        messages = [{{"role": "user", "content": [{{"type": "image", "image": image}},
                                                  {{"type": "text", "text": "What is this?"}}]}}]
        result = pipe(text=messages, max_new_tokens=6, generate_kwargs={{"do_sample": False}},
                      return_full_text=False)
        print("ANSWER" + json.dumps(result[0]["generated_text"]))
    """, cwd=work)
    answer = out.split("ANSWER", 1)[1].strip()
    import json

    assert json.loads(answer) == expected
