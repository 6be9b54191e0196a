"""DEEM's evaluation: RobustVQA (built the paper's way), POPE, MMVP, VQAv2 and captioning, for any
image-text-to-text model. `python -m evaluation --help`."""

from .answers import normalize_vqa_answer, parse_yes_no
from .metrics import caption_metrics, mmvp_pair_accuracy, pope_metrics, vqa_soft_accuracy, yes_no_accuracy

__all__ = ["caption_metrics", "mmvp_pair_accuracy", "normalize_vqa_answer", "parse_yes_no", "pope_metrics",
           "vqa_soft_accuracy", "yes_no_accuracy"]
