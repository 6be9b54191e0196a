"""Captions, questions with short answers, POPE-style existence questions and LLaVA conversations for a scene.

Every answer is derived from the scene alone, and a question is only asked where its answer is unique (the
colour of "the star" only when there is one star, and so on). POPE's "objects" are the shapes.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import combinations
from typing import Any

from .scene import PLURALS, SHAPES, Factors, Scene, sample_scene

NUMBERS = {1: "one", 2: "two", 3: "three"}
POPE_SPLITS = ("random", "popular", "adversarial")
POPE_QUESTION = "Is there a {object} in the image?"
MAIN_OBJECT_QUESTION = "Is {object} the main object in this image?"
CAPTION_TEMPLATES = (
    "A {medium} of {objects} on {background}.",
    "{Objects} on {background}.",
    "A {medium} showing {objects} against {background}.",
    "There {verb} {objects} on {background}.",
    "{Objects}.",
)
DESCRIBE_PROMPTS = ("Describe the image briefly.", "What does the image show?", "Give a short caption.")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def groups(scene: Scene) -> list[tuple[str, str, int]]:
    """(colour, shape, how many) in order of first appearance."""
    counts = Counter((o.colour, o.shape) for o in scene.objects)
    return [(colour, shape, n) for (colour, shape), n in counts.items()]


def describe_objects(scene: Scene) -> str:
    """'two red circles and a blue star'."""
    parts = [f"{_article(colour)} {colour} {shape}" if n == 1 else f"{NUMBERS[n]} {colour} {PLURALS[shape]}"
             for colour, shape, n in groups(scene)]
    return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"


def describe_background(scene: Scene) -> str:
    name = scene.background.name
    name = {"texture": "textured"}.get(name, name)
    return f"{_article(name)} {name} background"


def caption(scene: Scene, rng: random.Random | None = None, medium: str = "photo") -> str:
    """A caption from one of a few templates (the first one without `rng`); `medium` names the rendition."""
    template = rng.choice(CAPTION_TEMPLATES) if rng is not None else CAPTION_TEMPLATES[0]
    objects = describe_objects(scene)
    verb = "is" if len(scene.objects) == 1 else "are"
    text = template.format(medium=medium, objects=objects, Objects=objects[0].upper() + objects[1:],
                           background=describe_background(scene), verb=verb)
    return text[0].upper() + text[1:]


@dataclass(frozen=True)
class QA:
    kind: str  # count, colour, shape, position, size, existence
    question: str
    answer: str


def questions(scene: Scene, rng: random.Random | None = None) -> list[QA]:
    """Every question with a unique short answer; with `rng`, also one count question about an absent shape."""
    shapes = Counter(o.shape for o in scene.objects)
    colours = Counter(o.colour for o in scene.objects)
    pairs = Counter((o.colour, o.shape) for o in scene.objects)
    qas = [QA("count", "How many objects are there?", str(len(scene.objects)))]
    qas += [QA("count", f"How many {PLURALS[s]} are there?", str(n)) for s, n in shapes.items()]
    absent = [s for s in SHAPES if s not in shapes]
    if rng is not None and absent:
        qas.append(QA("count", f"How many {PLURALS[rng.choice(absent)]} are there?", "0"))
    for obj in scene.objects:
        if shapes[obj.shape] == 1:
            qas.append(QA("colour", f"What colour is the {obj.shape}?", obj.colour))
        if colours[obj.colour] == 1:
            qas.append(QA("shape", f"What shape is the {obj.colour} object?", obj.shape))
        if pairs[(obj.colour, obj.shape)] == 1:
            qas.append(QA("position", f"Where is the {obj.colour} {obj.shape}?", obj.position))
            qas.append(QA("size", f"What size is the {obj.colour} {obj.shape}?", obj.size))
    qas += [QA("existence", POPE_QUESTION.format(object=s), "yes") for s in shapes]
    return qas


@dataclass
class ShapeStats:
    """How often each shape appears (images containing it) and each pair co-occurs, over a sample of scenes."""

    frequency: dict[str, int]
    cooccurrence: dict[tuple[str, str], int]  # keys sorted by name

    @classmethod
    def from_scenes(cls, scenes: Iterable[Scene]) -> ShapeStats:
        frequency: Counter[str] = Counter()
        cooccurrence: Counter[tuple[str, str]] = Counter()
        for scene in scenes:
            present = sorted(set(scene.shapes))
            frequency.update(present)
            cooccurrence.update(combinations(present, 2))
        return cls(dict(frequency), dict(cooccurrence))

    @classmethod
    def sample(cls, num_scenes: int = 2000, seed: int = 0, factors: Factors | None = None) -> ShapeStats:
        """The statistics of a seeded sample of photograph scenes (no rendering: fast)."""
        rng = random.Random(f"toyworld-stats:{seed}")
        return cls.from_scenes(sample_scene(rng, factors) for _ in range(num_scenes))

    def together(self, a: str, b: str) -> int:
        return self.cooccurrence.get((min(a, b), max(a, b)), 0)

    def popular(self, absent: Iterable[str]) -> list[str]:
        """Absent shapes, most frequent first (ties in SHAPES order)."""
        return sorted(absent, key=lambda s: (-self.frequency.get(s, 0), SHAPES.index(s)))

    def adversarial(self, present: Iterable[str], absent: Iterable[str]) -> list[str]:
        """Absent shapes, most co-occurring with the present ones (summed) first; ties by frequency, SHAPES order."""
        present = list(present)
        return sorted(absent, key=lambda s: (-sum(self.together(s, p) for p in present),
                                             -self.frequency.get(s, 0), SHAPES.index(s)))


def pope_questions(scene: Scene, split: str, stats: ShapeStats | None, rng: random.Random,
                   shapes: tuple[str, ...] = SHAPES) -> list[dict[str, str]]:
    """POPE rows for one image: a yes for each distinct present shape, as many no's from absent shapes.

    Negatives: random draws absent shapes uniformly; popular takes the absent shapes most frequent in the
    dataset; adversarial those co-occurring most with the present shapes (both from `stats`)."""
    present = list(dict.fromkeys(scene.shapes))
    absent = [s for s in shapes if s not in present]
    k = min(len(present), len(absent))
    if split == "random":
        negatives = rng.sample(absent, k)
    elif split in ("popular", "adversarial"):
        if stats is None:
            raise ValueError(f"The {split} split needs shape statistics (ShapeStats.sample).")
        negatives = (stats.popular(absent) if split == "popular" else stats.adversarial(present, absent))[:k]
    else:
        raise ValueError(f"Unknown POPE split {split!r}; choose from {POPE_SPLITS}.")
    return [{"object": s, "text": POPE_QUESTION.format(object=s), "label": label, "split": split}
            for s, label in [(s, "yes") for s in present] + [(s, "no") for s in negatives]]


def conversation(scene: Scene, rng: random.Random, num_turns: int = 3, describe_prob: float = 0.2,
                 medium: str = "photo") -> list[dict[str, str]]:
    """A LLaVA-format conversation (`from` human / gpt; the first human turn starts with '<image>\\n'):
    short-answer questions, random POPE negatives, and sometimes a caption request."""
    pool = [(qa.question, qa.answer) for qa in questions(scene, rng)]
    pool += [(row["text"], row["label"]) for row in pope_questions(scene, "random", None, rng) if row["label"] == "no"]
    turns = rng.sample(pool, min(num_turns, len(pool)))
    if rng.random() < describe_prob:
        turns.insert(rng.randrange(len(turns) + 1), (rng.choice(DESCRIBE_PROMPTS), caption(scene, rng, medium)))
    messages: list[dict[str, str]] = []
    for index, (question, answer) in enumerate(turns):
        messages.append({"from": "human", "value": f"<image>\n{question}" if index == 0 else question})
        messages.append({"from": "gpt", "value": answer})
    return messages


def main_object_questions(scene: Scene, rng: random.Random) -> list[QA]:
    """RobustVQA's question (Figure 8 (e)) where it has an answer, i.e. for one-object scenes: a yes and a no."""
    if len(scene.objects) != 1:
        return []
    shape = scene.objects[0].shape
    other = rng.choice([s for s in SHAPES if s != shape])
    return [QA("main", MAIN_OBJECT_QUESTION.format(object=s), label) for s, label in ((shape, "yes"), (other, "no"))]


def paper_turn(qa: QA, first: bool) -> tuple[str, str]:
    """A question and its answer in the layout of the paper's Figure 8 (the image marker in the first turn only):
    VQA's for short answers, POPE's for existence and RobustVQA's for the main object, "The answer is ..."."""
    from processing.prompts_deem import PROMPT_PRESETS

    if qa.kind == "existence":
        (user, prefix), fields = PROMPT_PRESETS["pope"], {"object": qa.question[len("Is there a "):-len(" in the image?")]}
    elif qa.kind == "main":
        (user, prefix), fields = PROMPT_PRESETS["robustvqa"], {"object": qa.question.split()[1]}
    else:
        (user, prefix), fields = PROMPT_PRESETS["vqa"], {"question": qa.question}
    for name, value in fields.items():
        user = user.replace("{" + name + "}", value)
    if not first:
        user = " ".join(user.replace("<image>", " ").split())
    return user, f"{prefix} {qa.answer}"


def paper_conversation(scene: Scene, rng: random.Random, num_turns: int = 3) -> list[dict[str, str]]:
    """A LLaVA-format conversation (`from` human / gpt) in Figure 8's layout: short-answer questions, existence
    questions with random POPE negatives and, for one-object scenes, main-object questions."""
    pool = [qa for qa in questions(scene, rng)]
    pool += [QA("existence", row["text"], row["label"]) for row in pope_questions(scene, "random", None, rng)
             if row["label"] == "no"]
    pool += main_object_questions(scene, rng)
    messages: list[dict[str, str]] = []
    for index, qa in enumerate(rng.sample(pool, min(num_turns, len(pool)))):
        user, answer = paper_turn(qa, first=index == 0)
        messages += [{"from": "human", "value": user}, {"from": "gpt", "value": answer}]
    return messages


def scene_summary(scene: Scene) -> dict[str, Any]:
    """Flat per-image labels for dataset columns: shapes, colours, count, background."""
    return {"shapes": scene.shapes, "colours": [o.colour for o in scene.objects], "count": len(scene.objects),
            "background": scene.background.name}
