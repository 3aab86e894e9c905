"""VQA answers: the official evaluation's normalisation, the answer vocabulary, soft scores and accuracy.

VQAv2 has ten human answers per question. Training treats VQA as multi-label classification over a
vocabulary of frequent answers, each target weighted by how many annotators gave it (``soft_score``);
evaluation uses the official VQA accuracy (``vqa_accuracy``), which credits an answer given by at least
three of the ten annotators in full.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

# Marks that are deleted (next to a space, or in a text with a comma between digits) or else turned into a space.
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
               "?", "!")
ARTICLES = frozenset({"a", "an", "the"})
# Whole words replaced (the official evaluation's and METER's map): "none" is the count 0, as the number words
MANUAL_MAP = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
                "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
# Contractions whose apostrophe annotators often leave out. Left out on purpose: those whose form without the
# apostrophe is an English word of its own (it's/its, let's/lets, we'll/well, he'll/hell,
# I'll/ill, we're/were, she'd/shed, ...).
CONTRACTIONS = (
    "ain't", "aren't", "can't", "could've", "couldn't", "couldn't've", "didn't", "doesn't", "don't", "hadn't",
    "hasn't", "haven't", "he'd", "he's", "how'd", "how'll", "how's", "i'd've", "i'm", "i've", "isn't", "it'd",
    "it'll", "ma'am", "might've", "mightn't", "must've", "mustn't", "needn't", "o'clock", "shan't",
    "she's", "should've", "shouldn't", "that's", "there'd", "there's", "they'd", "they'll", "they're", "they've",
    "wasn't", "we've", "weren't", "what'll", "what're", "what's", "what've", "when's", "where'd", "where's",
    "where've", "who'd", "who'll", "who's", "who've", "why'll", "why's", "won't", "would've", "wouldn't",
    "y'all", "you'd", "you'll", "you're", "you've",
)
CONTRACTION_OF = {c.replace("'", ""): c for c in CONTRACTIONS}
DIGIT_COMMA = re.compile(r"\d,\d")
LOOSE_PERIOD = re.compile(r"\.(?!\d)")
SCORES = (0.0, 0.3, 0.6, 0.9, 1.0)  # by number of annotators who gave the answer: 0, 1, 2, 3, 4 or more


def strip_punctuation(text: str) -> str:
    """The official evaluation's punctuation step (see ``normalize_answer``)."""
    digit_comma = DIGIT_COMMA.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        # the test looks at the answer as given, not at the text the earlier marks left behind
        spaced = mark + " " in text or " " + mark in text
        out = out.replace(mark, "" if spaced or digit_comma else " ")
    return LOOSE_PERIOD.sub("", out)


def normalize_answer(text: str) -> str:
    """An answer as the official VQA evaluation compares it.

    1. Punctuation: each of ``PUNCTUATION`` is deleted where the answer has it next to a space (or the answer
       holds a comma between two digits: "1,000" -> "1000"), and otherwise replaced by a space ("black-white"
       -> "black white"). A period is dropped unless a digit follows it: "yes." -> "yes", "1.5" stays.
       The apostrophe is kept.
    2. Words: lower case, split at whitespace (which collapses it); "none" and the number words zero to ten become digits
       ("Two" -> "2", "none" -> "0"); the articles a, an, the are dropped; a contraction written without its apostrophe gets it
       back ("dont" -> "don't", see ``CONTRACTIONS``). The words are joined by one space.
    """
    words = []
    for word in strip_punctuation(text).lower().split():
        word = MANUAL_MAP.get(word, word)
        if word not in ARTICLES:
            words.append(CONTRACTION_OF.get(word, word))
    return " ".join(words)


def answer_vocabulary(answers: Iterable[str], min_count: int = 9) -> list[str]:
    """The normalised answers (VQAv2: each question's ``multiple_choice_answer``) that occur at least
    ``min_count`` times, the most frequent first, ties in alphabetical order."""
    counts = Counter(normalize_answer(a) for a in answers)
    return sorted((a for a, n in counts.items() if n >= min_count), key=lambda a: (-counts[a], a))


def soft_score(n: int) -> float:
    """The training target of an answer that ``n`` of the annotators gave: 0, 0.3, 0.6, 0.9, then 1.0 from 4 on."""
    if n < 0:
        raise ValueError(f"soft_score: {n} annotators (expected a count of 0 or more)")
    return SCORES[min(n, len(SCORES) - 1)]


def soft_targets(answers: Sequence[str], index: Mapping[str, int]) -> tuple[list[int], list[float]]:
    """The labels and soft scores of a question's annotator ``answers``, by label, as METER builds them
    (``write_vqa.py``): each distinct RAW answer string is counted and kept where it is itself an entry of the
    vocabulary ``index`` (normalised answer -> class); no normalisation on this side, so "two" and "Two" count for no
    class when the vocabulary holds "2". Both lists are empty when no answer is in the vocabulary (such questions are
    not trained on)."""
    counts = Counter(answers)
    pairs = sorted((index[a], soft_score(n)) for a, n in counts.items() if a in index)
    return [label for label, _ in pairs], [score for _, score in pairs]


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """The official VQA accuracy of ``prediction`` against the human ``answers`` (ten in VQAv2).

    Both sides are normalised (``normalize_answer``). For each answer left out in turn, the prediction scores
    min(#matches among the others / 3, 1); the accuracy is the mean over those subsets. With ten answers a
    prediction that matches 1, 2, 3, 4 or more of them scores 0.3, 0.6, 0.9, 1.0.
    """
    if not answers:
        raise ValueError("vqa_accuracy: no human answers to compare with (expected ten for a VQAv2 question)")
    predicted = normalize_answer(prediction)
    matches = sum(normalize_answer(a) == predicted for a in answers)
    # a left-out matching answer leaves matches - 1 among the others, a left-out other answer leaves all of them;
    # in thirds, so that one division gives 0.3 and not 0.30000000000000004
    thirds = matches * min(matches - 1, 3) + (len(answers) - matches) * min(matches, 3)
    return thirds / (3 * len(answers))


def majority_baseline(train_answers: Iterable[str], eval_answers: Sequence[Sequence[str]]) -> tuple[str, float]:
    """The majority-answer baseline: the most common normalised answer of training (``train_answers``: each
    question's ``multiple_choice_answer``) given to every evaluated question; (that answer, its official accuracy in
    % over ``eval_answers``, each question's annotator answers). What a model that learns nothing of the images
    or the question reaches."""
    counts = Counter(normalize_answer(a) for a in train_answers)
    if not counts or not eval_answers:
        raise ValueError("majority_baseline: no training answers or no evaluated question")
    answer = min(counts, key=lambda a: (-counts[a], a))
    return answer, 100.0 * sum(vqa_accuracy(answer, answers) for answers in eval_answers) / len(eval_answers)
