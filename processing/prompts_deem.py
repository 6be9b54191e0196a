"""The paper's prompt presets (Figure 8) and its chat format (system prompt, `## USER:` / `## ASSISTANT:`)."""

from __future__ import annotations

SYSTEM_PROMPT = "You are a helpful assistant."
IMAGE_MARKER = "<image>"

# Each preset: the user turn (with the image marker) and the answer prefix the paper's model was trained with.
PROMPT_PRESETS: dict[str, tuple[str, str]] = {
    "vqa": ("Based on the image, please answer the question. <image>{question} "
            "Please provide an accurate answer within one word.", "The answer is"),
    "caption": ("<image> Could you provide a short description of the image?", "A photo of"),
    # The region is a second slot of the same image, carrying the region mask (the paper's `{mask}`).
    "region": ("<image> Provide a short description for this <ref>region1</ref> <image>", ""),
    "pope": ("<image> Is there a {object} in the image? Please answer yes or no.", ""),
    "robustvqa": ("<image> Is {object} the main object in this image? Please answer yes or no.", ""),
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
