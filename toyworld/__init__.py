"""A toy world of coloured shapes for small-scale DEEM studies: seeded scenes with controllable factors,
photographs and shifted renditions, captions, questions, POPE and RobustVQA-style exports."""

from .renditions import RENDITIONS, ROBUSTVQA_SOURCES, apply_rendition
from .scene import COLOURS, POSITIONS, SHAPES, Factors, Scene, SceneObject, Style, render, sample_scene
from .text import POPE_SPLITS, ShapeStats, caption, conversation, pope_questions, questions

__all__ = ["COLOURS", "POPE_SPLITS", "POSITIONS", "RENDITIONS", "ROBUSTVQA_SOURCES", "SHAPES", "Factors", "Scene",
           "SceneObject", "ShapeStats", "Style", "apply_rendition", "caption", "conversation", "pope_questions",
           "questions", "render", "sample_scene"]
