"""Degeneration statistics on hand-made texts: a repetition loop, a clean answer, n-gram counts."""
import math

from srmir.textstats import distinct_n, is_repetitive, max_ngram_repeats, word_count, words

LOOP = ("I'm here to help, but I'm not here to help you. I'm here to help you, but I'm not here to help you. "
        "I'm here to help you, but")
CLEAN = "Find the process ID with ps or top, then end it with kill followed by the ID."


def test_words_ignore_case_punctuation_and_curly_apostrophes():
    assert words("I\u2019m here, to HELP.") == ["i'm", "here", "to", "help"]
    assert word_count("  ") == 0


def test_repetition_loop_is_flagged_and_a_clean_answer_is_not():
    # "here to help you" occurs 3 times in LOOP
    assert max_ngram_repeats(LOOP, 4) >= 3 and is_repetitive(LOOP)
    assert max_ngram_repeats(CLEAN, 4) == 1 and not is_repetitive(CLEAN)
    assert not is_repetitive("too short")  # fewer than 4 words: no 4-gram at all
    assert is_repetitive("a b c d a b c d a b c d")  # (a b c d) three times
    assert not is_repetitive("a b c d a b c d")  # twice only


def test_distinct_n_hand_computed():
    # "a b a b": 2-grams (a b), (b a), (a b) → 2 distinct / 3
    assert math.isclose(distinct_n(["a b a b"], 2), 2 / 3)
    # pooled over texts: (a b) twice, (c d) once → 2 / 3
    assert math.isclose(distinct_n(["a b", "a b", "c d"], 2), 2 / 3)
    assert math.isnan(distinct_n(["one"], 2))
    assert distinct_n([CLEAN], 2) == 1.0
