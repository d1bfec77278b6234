"""One normaliser in front of every moderation check (the trainer's classifier and word lists, the class's own words).

Pure functions, no I/O. What it undoes, each a trick that let offensive text past a check:
- Unicode compatibility forms (NFKC): full-width letters, circled and mathematical letters, half-width Hangul;
- invisible characters: zero-width spaces and joiners, soft hyphens, bidi and other format characters, Hangul
  fillers, variation selectors and stray combining marks (accents are dropped from Latin letters: shít -> shit);
- look-alike letters: Cyrillic and Greek letters that look Latin, small capitals, regional-indicator letters,
  digits and symbols inside Latin words (sh1t, b!tch, a$$), and Latin letters used as Hangul vowels (새ㄲI);
- letters spaced out or dotted apart: "s h i t", "f.u.c.k", "ㅅ ㅂ", "시 발";
- Hangul typed as separate jamo: ㅅㅣㅂㅏㄹ -> 시발; a digit or mark slipped inside a Korean word: 시1발, 씨-발;
- letters repeated for emphasis: fuuuuck -> fuck.
The result is only ever read by checks; it is never shown to anyone.
"""

from __future__ import annotations

import re
import unicodedata

# Hangul compatibility jamo (what a Korean keyboard types alone) and the conjoining jamo NFKC turns them into.
_CHOSEONG = "ㄱㄲㄴㄷㄸㄹㅁㅂㅃㅅㅆㅇㅈㅉㅊㅋㅌㅍㅎ"
_JUNGSEONG = "ㅏㅐㅑㅒㅓㅔㅕㅖㅗㅘㅙㅚㅛㅜㅝㅞㅟㅠㅡㅢㅣ"
_JONGSEONG = ["", "ㄱ", "ㄲ", "ㄳ", "ㄴ", "ㄵ", "ㄶ", "ㄷ", "ㄹ", "ㄺ", "ㄻ", "ㄼ", "ㄽ", "ㄾ", "ㄿ", "ㅀ", "ㅁ", "ㅂ",
              "ㅄ", "ㅅ", "ㅆ", "ㅇ", "ㅈ", "ㅊ", "ㅋ", "ㅌ", "ㅍ", "ㅎ"]
_FINAL_INDEX = {jamo: i for i, jamo in enumerate(_JONGSEONG) if jamo}
_SYLLABLE_FIRST, _SYLLABLE_LAST = 0xAC00, 0xD7A3


def _conjoining_to_compat() -> dict[str, str]:
    """Map each conjoining jamo (U+1100..U+11FF) that has a compatibility form to that form."""
    table: dict[str, str] = {}
    for code in range(0x3131, 0x318F):
        compat = chr(code)
        conjoining = unicodedata.normalize("NFKC", compat)
        if len(conjoining) == 1 and conjoining != compat:
            table[conjoining] = compat
    # Final consonants (jongseong) have no compatibility form of their own; they share the initial's.
    for code in range(0x11A8, 0x11C3):
        name = unicodedata.name(chr(code), "")
        for compat in _JONGSEONG[1:]:
            if unicodedata.name(compat, "").removeprefix("HANGUL LETTER ") == name.removeprefix(
                    "HANGUL JONGSEONG "):
                table[chr(code)] = compat
    return table


# Letters that look Latin but are not (Cyrillic, Greek, small capitals, dotless i), folded after case-folding.
_FOLDS: dict[str, str] = {
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c", "т": "t",
    "у": "y", "х": "x", "ѕ": "s", "і": "i", "ї": "i", "ј": "j", "ԁ": "d", "ԛ": "q", "ԝ": "w", "ь": "b", "г": "r",
    "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t", "υ": "u",
    "χ": "x", "ω": "w", "μ": "u", "ς": "s", "σ": "o", "ı": "i", "ɡ": "g", "ɑ": "a",
    "ᴀ": "a", "ʙ": "b", "ᴄ": "c", "ᴅ": "d", "ᴇ": "e", "ꜰ": "f", "ɢ": "g", "ʜ": "h", "ɪ": "i", "ᴊ": "j", "ᴋ": "k",
    "ʟ": "l", "ᴍ": "m", "ɴ": "n", "ᴏ": "o", "ᴘ": "p", "ʀ": "r", "ꜱ": "s", "ᴛ": "t", "ᴜ": "u", "ᴠ": "v", "ᴡ": "w",
    "ʏ": "y", "ᴢ": "z",
    **{chr(0x1F1E6 + i): chr(ord("a") + i) for i in range(26)},  # regional indicators 🇦..🇿
    **_conjoining_to_compat(),
}
_LOOKALIKES = str.maketrans(_FOLDS)
# Characters nobody sees: dropped wherever they are (format characters are found by category below).
_INVISIBLE = frozenset("\u115f\u1160\u3164\uffa0\u034f\u180e\u2800") | {chr(c) for c in range(0xFE00, 0xFE10)}
# Digits and symbols read as letters inside a Latin word.
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s", "!": "i",
                       "|": "l", "€": "e", "8": "b"})
# Digits, ! and | only between two letters (sh1t, b!tch: not covid19, hello!); $ and @ next to any letter (a$$, @ss).
_LEET_INSIDE = re.compile(r"(?<=[a-z])[0-9!|€]{1,2}(?=[a-z])|(?<=[a-z])[@$]+|[@$]+(?=[a-z])")
# A Latin letter or digit written for the vowel ㅣ after a jamo consonant (새ㄲI, ㅅ1발).
_LATIN_VOWEL = re.compile(rf"(?<=[{_CHOSEONG}])[il1|!]")
_HANGUL = "\uac00-\ud7a3\u3131-\u318e"
# One digit or mark slipped between two Hangul letters (시1발, 씨-발, 병.신, 존*나), or the vowel ㅡ used as a dash
# between two syllables (새ㅡ퀴): dropped. Separators that also split ordinary lists (commas, middle dots, spaces)
# are not in it, so 바디워시, 바디로션 stays two words.
_INSIDE_KOREAN = re.compile(rf"(?<=[{_HANGUL}])[0-9.\-_*~^+=@#$%&!?'\"`/\\|:;]{{1,2}}(?=[{_HANGUL}])"
                            rf"|(?<=[\uac00-\ud7a3])ㅡ{{1,2}}(?=[\uac00-\ud7a3])")
# Letters spaced or dotted apart: single letters with only separators between them.
_SEPARATOR = r"[\s.\-_*~^+=/\\|·,:;'\"`]{1,3}"
_SPACED_LATIN = re.compile(rf"(?<![a-z0-9])[a-z](?:{_SEPARATOR}[a-z]){{2,}}(?![a-z0-9])")
_SPACED_HANGUL = re.compile(rf"(?<![{_HANGUL}0-9a-z])[{_HANGUL}](?:{_SEPARATOR}[{_HANGUL}]){{1,}}(?![{_HANGUL}0-9a-z])")
_SEPARATORS = re.compile(_SEPARATOR)
_REPEAT_LATIN = re.compile(r"([a-z])\1{2,}")
_REPEAT_OTHER = re.compile(rf"([{_HANGUL}])\1{{2,}}")


def normalise(text: str) -> str:
    """Undo the disguises above; keeps word boundaries (spaces) so checks can match whole words."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(_visible(ch) for ch in text).casefold().translate(_LOOKALIKES)
    text = _SPACED_LATIN.sub(_joined, text)
    text = _LEET_INSIDE.sub(lambda match: match.group(0).translate(_LEET), text)
    text = _LATIN_VOWEL.sub("ㅣ", text)
    text = _SPACED_HANGUL.sub(_joined, text)
    text = _INSIDE_KOREAN.sub("", text)
    text = compose_jamo(text)
    text = _REPEAT_LATIN.sub(r"\1", text)
    return _REPEAT_OTHER.sub(r"\1\1", text)


def compact(text: str) -> str:
    """The normalised text's letters and digits only (spacing and punctuation gone), for substring word lists.

    Normalised once more after the spaces go, so that compact(compact(x)) == compact(x): a word stored compacted
    matches the same word in a text however the text was spaced (2학년 3반 and 2학년3반 give the same)."""
    return _letters(normalise(_letters(normalise(text))))


def _letters(text: str) -> str:
    return "".join(ch for ch in text if unicodedata.category(ch)[0] in "LN")


def compose_jamo(text: str) -> str:
    """Recompose Hangul typed as separate compatibility jamo (ㅅㅣㅂㅏㄹ -> 시발); other text is kept as it is."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        nxt = text[i + 1] if i + 1 < n else ""
        if ch in _CHOSEONG and nxt and nxt in _JUNGSEONG:
            code = _SYLLABLE_FIRST + (_CHOSEONG.index(ch) * 21 + _JUNGSEONG.index(nxt)) * 28
            i += 2
            final, i = _final(text, i)
            out.append(chr(code + final))
            continue
        if _SYLLABLE_FIRST <= ord(ch) <= _SYLLABLE_LAST and (ord(ch) - _SYLLABLE_FIRST) % 28 == 0:
            final, after = _final(text, i + 1)
            # Only a lone trailing consonant (시바ㄹ), not the first of a run such as ㅋㅋ.
            if final and (after >= n or text[after] not in _CHOSEONG):
                out.append(chr(ord(ch) + final))
                i = after
                continue
        out.append(ch)
        i += 1
    return "".join(out)


def _final(text: str, i: int) -> tuple[int, int]:
    """The final-consonant index at text[i] (0: none) and where reading goes on; a consonant before a vowel starts
    the next syllable instead."""
    if i < len(text) and text[i] in _FINAL_INDEX and not (i + 1 < len(text) and text[i + 1] in _JUNGSEONG):
        return _FINAL_INDEX[text[i]], i + 1
    return 0, i


def _visible(ch: str) -> str:
    """The character, or nothing when it is invisible; accents come off Latin letters, controls become spaces."""
    if ch in _INVISIBLE:
        return ""
    category = unicodedata.category(ch)
    if category in ("Cf", "Mn", "Me"):
        return ""
    if category == "Cc":
        return ch if ch in "\n\t" else " "
    if "\u00c0" <= ch <= "\u024f" or "\u1e00" <= ch <= "\u1eff":
        return "".join(c for c in unicodedata.normalize("NFD", ch) if unicodedata.category(c) != "Mn")
    return ch


def _joined(match: re.Match[str]) -> str:
    return _SEPARATORS.sub("", match.group(0))

