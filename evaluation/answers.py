"""From free-text model output to comparable answers: yes/no parsing and VQAv2's answer normalisation."""

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
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    for mark in _PUNCTUATION:
        if (mark + " " in text or " " + mark in text) or re.search(_COMMA_STRIP, text) is not None:
            text = text.replace(mark, "")
        else:
            text = text.replace(mark, " ")
    text = _PERIOD_STRIP.sub("", text)
    words = []
    for word in text.lower().split():
        word = _NUMBERS.get(word, word)
        if word in _ARTICLES:
            continue
        words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)
