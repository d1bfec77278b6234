"""dataset_rules.normalise: each disguise that let offensive text past a check is undone; ordinary text is kept."""

from __future__ import annotations

import pytest

from dataset_rules.normalise import compact, compose_jamo, normalise


@pytest.mark.parametrize(("text", "expected"), [
    ("ｆｕｃｋ", "fuck"),  # full-width letters
    ("ⓕⓤⓒⓚ", "fuck"),  # circled letters
    ("𝐟𝐮𝐜𝐤", "fuck"),  # mathematical bold letters
    ("ﾊﾞｶ", "バカ"),  # half-width katakana
])
def test_compatibility_forms_fold_to_plain_letters(text: str, expected: str) -> None:
    """NFKC: full-width, circled, mathematical and half-width forms read as the plain letters."""
    assert normalise(text) == expected


@pytest.mark.parametrize("hidden", ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u202e", "\u3164",
                                    "\u115f", "\ufe0f", "\u034f"])
def test_invisible_characters_inside_a_word_are_removed(hidden: str) -> None:
    """Zero-width spaces and joiners, word joiner, BOM, soft hyphen, bidi override, Hangul fillers, variation
    selectors and the grapheme joiner vanish, in Latin and in Hangul."""
    assert normalise(f"fu{hidden}ck") == "fuck"
    assert normalise(f"씨{hidden}발") == "씨발"


@pytest.mark.parametrize(("text", "expected"), [
    ("fuсk", "fuck"),  # Cyrillic с
    ("ѕhіt", "shit"),  # Cyrillic ѕ and і
    ("αss", "ass"),  # Greek alpha
    ("ᴅɪᴄᴋ", "dick"),  # small capitals
    ("🇫🇺🇨🇰", "fuck"),  # regional-indicator letters
    ("shít", "shit"),  # an accent
    ("s̷h̷i̷t̷", "shit"),  # combining strokes
    ("sh1t", "shit"), ("b!tch", "bitch"), ("a$$", "ass"), ("@ss", "ass"), ("f4g", "fag"),  # digits and symbols
    ("FUCK", "fuck"),  # case
])
def test_look_alike_letters_fold_to_latin(text: str, expected: str) -> None:
    """Cyrillic and Greek look-alikes, small capitals, flags, accents and leetspeak read as the Latin word."""
    assert normalise(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("s h i t", "shit"), ("f.u.c.k you", "fuck you"), ("f-u-c-k", "fuck"), ("b_i_t_c_h", "bitch"),
    ("ㅅ ㅂ", "ㅅㅂ"), ("ㅅ.ㅂ", "ㅅㅂ"), ("시 발", "시발"), ("병 신 같은", "병신 같은"), ("새 끼", "새끼"),
])
def test_spaced_out_letters_are_joined(text: str, expected: str) -> None:
    """Single letters with only spaces or marks between them are one word again, in Latin, jamo and Hangul."""
    assert normalise(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("ㅅㅣㅂㅏㄹ", "시발"), ("ㅂㅕㅇㅅㅣㄴ", "병신"), ("ㅅㅐㄲㅣ", "새끼"), ("ㅈㅗㄴㄴㅏ", "존나"),
    ("새ㄲI", "새끼"), ("ㅅl발", "시발"),  # a Latin letter for the vowel ㅣ
])
def test_hangul_jamo_are_recomposed(text: str, expected: str) -> None:
    """Jamo typed one by one (and Latin I or l used for ㅣ) become syllables again."""
    assert normalise(text) == expected


@pytest.mark.parametrize(("text", "expected"), [("시1발", "시발"), ("씨-발", "씨발"), ("병.신", "병신"),
                                                ("존*나", "존나"), ("씨~발", "씨발"), ("새ㅡ퀴", "새퀴"),
                                                ("짜증나ㅡㅡ", "짜증나ㅡㅡ")])
def test_a_digit_or_mark_inside_a_korean_word_is_dropped(text: str, expected: str) -> None:
    """One digit or mark (or the vowel ㅡ as a dash) slipped between Hangul letters does not split the word; ㅡㅡ
    after a word (a frown) stays."""
    assert normalise(text) == expected


def test_letters_repeated_for_emphasis_are_squeezed() -> None:
    """fuuuuck reads fuck; Korean repeats keep two (ㅋㅋ stays laughter)."""
    assert normalise("fuuuuck") == "fuck" and normalise("ㅋㅋㅋㅋㅋ") == "ㅋㅋ"


@pytest.mark.parametrize("text", [
    "학생증이 없으면 빌릴 수 없어요. 행정실에서 학생증을 다시 발급받은 뒤 빌려 주세요.",  # issue 22, line 17
    "바디워시, 바디로션", "일본 자위대", "수시 발표", "다시 발급", "우리 반은 18명이야", "3.1절에 태극기를 달아요",
    "How do clouds move?", "covid19 cases fell", "hello!", "Call me at 10", "I'm 15 years old",
])
def test_ordinary_text_keeps_its_words_apart(text: str) -> None:
    """Ordinary sentences keep their word boundaries and digits: nothing joins words across a space or a comma."""
    assert normalise(text).split() == text.lower().split()


def test_compose_jamo_leaves_laughter_and_syllables_alone() -> None:
    """A run of consonants (ㅋㅋ, ㅇㅋ) is not glued onto the syllable before it."""
    assert compose_jamo("좋아ㅋㅋ") == "좋아ㅋㅋ" and compose_jamo("그래ㅇㅋ") == "그래ㅇㅋ"


@pytest.mark.parametrize(("text", "expected"), [("바 보", "바보"), ("바.보!", "바보"), ("ＢＡＢＯ", "babo"),
                                                ("바1보", "바보"), ("ㅂㅏㅂㅗ", "바보"), ("바\u200b보", "바보"),
                                                ("2학년 3반", "2학년반")])
def test_compact_drops_spacing_and_punctuation_and_is_stable(text: str, expected: str) -> None:
    """compact() is what substring word lists compare; compacting twice changes nothing."""
    assert compact(text) == expected == compact(expected)
