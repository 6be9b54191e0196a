"""Writes evaluation/imagenet_classes.json: the 1000 ImageNet classes in index order, each with its WordNet id
(timm's synset list) and CLIP's cleaned class name (open_clip's zero-shot metadata).

Run: .venv/bin/python scripts/make_imagenet_classes.py
"""

from __future__ import annotations

import json
from pathlib import Path

from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
from timm.data import ImageNetInfo


def main() -> None:
    wnids = ImageNetInfo().label_names()
    if len(wnids) != 1000 or len(IMAGENET_CLASSNAMES) != 1000:
        raise RuntimeError("expected 1000 ImageNet classes from timm and open_clip")
    classes = [{"id": i, "wnid": wnid, "name": name} for i, (wnid, name) in enumerate(zip(wnids, IMAGENET_CLASSNAMES))]
    path = Path(__file__).resolve().parents[1] / "evaluation" / "imagenet_classes.json"
    path.write_text("[\n" + ",\n".join(json.dumps(c) for c in classes) + "\n]\n")
    print(f"wrote {path} ({len(classes)} classes)")


if __name__ == "__main__":
    main()
