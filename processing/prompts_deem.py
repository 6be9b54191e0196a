"""The paper's prompt presets (Figure 8) and its chat format (system prompt, `## USER:` / `## ASSISTANT:`)."""

from __future__ import annotations

SYSTEM_PROMPT = "You are a helpful assistant."
IMAGE_MARKER = "<image>"

# Paper, appendix, Figure 8 ("Prompt template used for evaluation"; DESIGN.md §4): the user turns of (a) VQA,
# (d) Hallucination (POPE) and (e) Robustness (RobustVQA) open with LEAD, and their assistant turns with
# ANSWER_PREFIX ("ASSISTANT: The answer is <ANSWER>"); (b) Image Captioning has no lead and "A photo of".
LEAD = "Based on the image, please answer the question."
ANSWER_PREFIX = "The answer is"

# Each task's user turn around a written-out question (`{question}`) and the answer prefix, as in Figure 8:
# the image right after the lead, the question after it (no space in (a) "{IMAGE}{QUESTION}", one in (d), (e)).
# "mmvp" is not in Figure 8: it takes the yes/no layout, with the options inside the question.
QUESTION_TEMPLATES: dict[str, tuple[str, str]] = {
    "vqa": (f"{LEAD} {IMAGE_MARKER}{{question}}", ANSWER_PREFIX),  # (a)
    "caption": (f"{IMAGE_MARKER} {{question}}", "A photo of"),  # (b)
    "pope": (f"{LEAD} {IMAGE_MARKER} {{question}}", ANSWER_PREFIX),  # (d)
    "robustvqa": (f"{LEAD} {IMAGE_MARKER} {{question}}", ANSWER_PREFIX),  # (e)
    "mmvp": (f"{LEAD} {IMAGE_MARKER} {{question}}", ANSWER_PREFIX),
}

# The questions of Figure 8, with their fields (`question`, `object`).
PRESET_QUESTIONS: dict[str, str] = {
    "vqa": "{question} Please provide an accurate answer within one word.",
    "caption": "Could you provide a short description of the image?",
    "pope": "Is there a {object} in the image? Please answer yes or no.",
    "robustvqa": "Is {object} the main object in this image? Please answer yes or no.",
}

# Each preset: the user turn (with the image marker) and the answer prefix the paper's model was trained with.
PROMPT_PRESETS: dict[str, tuple[str, str]] = {
    **{name: (QUESTION_TEMPLATES[name][0].replace("{question}", question), QUESTION_TEMPLATES[name][1])
       for name, question in PRESET_QUESTIONS.items()},
    # (c) Referring: the region is a second slot of the same image, carrying the region mask (the paper's `{mask}`).
    "region": ("<image> Provide a short description for this <ref>region1</ref> <image>", ""),
}

CHAT_TEMPLATE = (
    "{% set system = namespace(text='" + SYSTEM_PROMPT + "') %}"
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{% set system.text = message['content'] if message['content'] is string "
    "else message['content'] | map(attribute='text') | join('') %}{% endif %}{% endfor %}"
    "{{ system.text }}"
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ '\\n## USER: ' if message['role'] == 'user' else '\\n## ASSISTANT: ' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %}</s>{% endif %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '\\n## ASSISTANT:' }}{% endif %}"
)


def preset_prompt(name: str, **fields: str) -> tuple[str, str]:
    """The user text and answer prefix of a named preset, with its fields (`question`, `object`) filled in."""
    if name not in PROMPT_PRESETS:
        raise ValueError(f"Unknown prompt preset {name!r}; known: {', '.join(PROMPT_PRESETS)}")
    template, prefix = PROMPT_PRESETS[name]
    try:
        return template.format(**fields), prefix
    except KeyError as missing:
        raise ValueError(f"Prompt preset {name!r} needs the field {missing}") from None


def question_prompt(task: str, question: str) -> tuple[str, str]:
    """The Figure 8 user text and answer prefix for a question already written out (as benchmarks hold them):
    `question_prompt("pope", "Is there a cat in the image? Please answer yes or no.")` equals
    `preset_prompt("pope", object="cat")`."""
    if task not in QUESTION_TEMPLATES:
        raise ValueError(f"No Figure 8 template for {task!r}; known: {', '.join(QUESTION_TEMPLATES)}")
    template, prefix = QUESTION_TEMPLATES[task]
    return template.replace("{question}", question), prefix
