"""From free-text model output to comparable answers: yes/no parsing (ours and the three published POPE
conventions) and VQAv2's answer normalisation."""

from __future__ import annotations

import re

_NEGATIONS = ("not", "no", "isn't", "isnt", "aren't", "arent", "doesn't", "doesnt", "don't", "dont", "cannot",
              "can't", "cant", "none", "nothing", "neither", "nope")
_WORD = re.compile(r"[a-z']+")


def parse_yes_no(text: str) -> str | None:
    """'yes', 'no' or None (no answer found).

    The first word decides when it is yes/no ("Yes, there is..."; "No."); otherwise the first yes/no word counts,
    and a negation right before "yes"-like wording ("there is not a dog") reads as no. Case and punctuation do not
    matter. An empty or undecidable answer is None, never a guess.
    """
    words = _WORD.findall(text.lower().replace("’", "'"))
    if not words:
        return None
    if words[0] in ("yes", "yeah", "yep", "correct", "true"):
        return "yes"
    if words[0] in ("no", "nope", "false", "incorrect"):
        return "no"
    for index, word in enumerate(words):
        if word == "yes":
            return "yes"
        if word == "no":
            return "no"
        if word in _NEGATIONS and index < len(words) - 1:
            return "no"
    if words[0] in ("there", "it", "this", "the", "a", "an", "i") and any(w in ("is", "are", "see") for w in words):
        return "yes"
    return None


# VQAv2's official normalisation (the evaluation script of Antol et al. / Goyal et al.), in our own words.
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's",
    "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itll": "it'll", "lets": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't", "shant": "shan't",
    "shed": "she'd", "shes": "she's", "shouldve": "should've", "shouldnt": "shouldn't", "somebodys": "somebody's",
    "someones": "someone's", "somethings": "something's", "thats": "that's", "thered": "there'd",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyll": "they'll", "theyre": "they're",
    "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "wholl": "who'll",
    "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "yall": "y'all", "youd": "you'd", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?",
                "!"]
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def normalize_vqa_answer(answer: str) -> str:
    """Punctuation, number words → digits, articles dropped, contractions restored, as VQAv2 scores answers."""
    text = vqa_punctuation(answer.replace("\n", " ").replace("\t", " ").strip())
    words = []
    for word in text.lower().split():
        word = _NUMBERS.get(word, word)
        if word in _ARTICLES:
            continue
        words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def vqa_punctuation(text: str) -> str:
    """The VQA evaluation's processPunctuation, which VLMEvalKit reuses, quirks kept so scores match theirs.

    Whether a mark is dropped or turned into a space is decided on the input text; the period pattern's broken
    look-behind means any "." not followed by a digit goes; only the first 32 periods are removed (the original
    passes re.UNICODE, 32, as `sub`'s count).
    """
    out = text
    for mark in _PUNCTUATION:
        if (mark + " " in text or " " + mark in text) or _COMMA_STRIP.search(text) is not None:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_STRIP.sub("", out, count=32)


# The three ways POPE answers are read in published numbers. Each is the source's rule, restated.

def pope_official_answer(text: str) -> str:
    """POPE's own evaluate.py (github.com/RUCAIBox/POPE): always "yes" or "no".

    Only the text before the first "." counts; commas are removed; it is split on single spaces; if a word is
    exactly "No", "not" or "no" the answer is no, otherwise yes (so "NO", "No!" or an empty answer read as yes).
    """
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if any(word in ("No", "not", "no") for word in words) else "yes"


def lmms_eval_answer(text: str) -> str:
    """lmms-eval's POPE task (lmms_eval/tasks/pope/utils.py): the prediction lower-cased and stripped, compared
    as a whole with the label; anything but exactly "yes"/"no" ("yes." included) matches neither."""
    return text.lower().strip()


def yorn_extraction(text: str) -> str:
    """VLMEvalKit's YOrN_Extraction (vlmeval/dataset/utils/yorn.py) without an LLM judge ("exact_matching"):
    lower-case, VQA punctuation processing, split on whitespace; "yes" if the word yes is there and no is not,
    "no" for the reverse, else "unknown"."""
    words = vqa_punctuation(text.lower()).split()
    if "yes" in words and "no" not in words:
        return "yes"
    if "no" in words and "yes" not in words:
        return "no"
    return "unknown"
