"""The adversary: rewrites a text so a human still reads it but a character n-gram model does not.

Each trick is deterministic given its ``random.Random`` (tests and the bench replay the same
attack), keeps the text readable to a person (the reasoner must still see the violation) and
mirrors what evaders do in the wild: zero-width characters inside words, Cyrillic and Greek
look-alike letters, words spelt letter by letter (with spaces or with punctuation and line breaks),
"fancy text" alphabets, decorative accents, leetspeak, emoji between letters and Latin letters with
hooks and strokes. :func:`obfuscate` chains several.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

__all__ = ["TRICKS", "diacritics", "homoglyphs", "hooks", "leet", "obfuscate", "separators", "spaced", "styled",
           "symbols", "zero_width"]

ZERO_WIDTH = ("\u200b", "\u200c", "\u200d", "\u2060", "\ufeff")
# Latin letter -> Cyrillic and Greek letters drawn alike in common fonts.
HOMOGLYPHS: dict[str, str] = {
    "a": "аα", "c": "сϲ", "d": "ԁ", "e": "еε", "h": "һ", "i": "іι", "j": "ј", "k": "κк", "l": "ӏ",
    "o": "оο", "p": "рρ", "q": "ԛ", "s": "ѕ", "u": "υ", "v": "ν", "w": "ԝ", "x": "хχ", "y": "уү",
    "A": "АΑ", "B": "ВΒ", "C": "С", "E": "ЕΕ", "H": "НΗ", "I": "ІΙ", "J": "Ј", "K": "КΚ", "M": "МΜ",
    "N": "Ν", "O": "ОΟ", "P": "РΡ", "S": "Ѕ", "T": "ТΤ", "X": "ХΧ", "Y": "ҮΥ", "Z": "Ζ",
}
# Decorative marks that sit on a letter without hiding it (grave, acute, circumflex, tilde,
# macron, breve, dot, diaeresis, ring, caron, dot below, cedilla, ogonek).
MARKS = "\u0300\u0301\u0302\u0303\u0304\u0306\u0307\u0308\u030a\u030c\u0323\u0327\u0328"
# Digits and signs that stand for letters in leetspeak.
LEET: dict[str, str] = {"a": "4@", "e": "3", "i": "1", "o": "0", "s": "5$", "t": "7"}
# Emoji and symbols dropped between the letters of a word (a variation selector and a ZWJ sequence too).
SYMBOLS = ("\U0001f525", "\u2764\ufe0f", "\U0001f4b0", "\u2b50", "\U0001f44d\U0001f3fd", "\u2728",
           "\U0001f468\u200d\U0001f4bb")
# Separators between the letters of a spelt-out word: punctuation, dashes, dots, a tab, a line break.
SEPARATORS = (",", "+", "~", "'", ":", ";", "\u2013", "\u2010", "\u2022", "\u30fb", "\u2044", "\u2026", ". ", "  ",
              "\t", "\n")
# Latin letters with a hook, stroke or bar, drawn like the plain letter.
HOOKS: dict[str, str] = {
    "b": "ƀ", "c": "ƈ", "d": "ȡ", "f": "ƒ", "g": "ɠ", "h": "ɦ", "k": "ⱪ", "l": "ɫ", "m": "ɱ", "n": "ɲ",
    "p": "ƥ", "q": "ʠ", "r": "ɍ", "s": "ʂ", "t": "ƭʈ", "v": "ʋ", "w": "ⱳ", "y": "ɏ", "z": "ȥ",
}
_BOLD, _FULLWIDTH, _CIRCLED = 0x1D41A - 0x61, 0xFF41 - 0x61, 0x24D0 - 0x61
_BOLD_UPPER, _FULLWIDTH_UPPER, _CIRCLED_UPPER = 0x1D400 - 0x41, 0xFF21 - 0x41, 0x24B6 - 0x41


def _words(text: str) -> list[str]:
    return text.split(" ")


def zero_width(text: str, rng: random.Random) -> str:
    """Zero-width characters (U+200B, U+200C, U+200D, U+2060, U+FEFF) between the letters of each
    word of two or more letters, one or two per word."""
    out = []
    for word in _words(text):
        if len(word) >= 2:
            spots = sorted(rng.sample(range(1, len(word)), k=min(len(word) - 1, rng.randint(1, 2))), reverse=True)
            for spot in spots:
                word = word[:spot] + rng.choice(ZERO_WIDTH) + word[spot:]
        out.append(word)
    return " ".join(out)


def homoglyphs(text: str, rng: random.Random, share: float = 0.5) -> str:
    """About ``share`` of the letters that have a Cyrillic or Greek look-alike replaced by one."""
    return "".join(rng.choice(HOMOGLYPHS[ch]) if ch in HOMOGLYPHS and rng.random() < share else ch for ch in text)


def spaced(text: str, rng: random.Random) -> str:
    """Words of three or more letters spelt letter by letter (spaces, dots or dashes between the
    letters), words apart by two spaces, as evaders write "f r e e  m o n e y"."""
    out = []
    for word in _words(text):
        if len(word) >= 3 and word.isalpha():
            word = rng.choice((" ", ".", "-")).join(word)
        out.append(word)
    return "  ".join(out)


def _style(ch: str, lower: int, upper: int) -> str:
    if "a" <= ch <= "z":
        return chr(ord(ch) + lower)
    if "A" <= ch <= "Z":
        return chr(ord(ch) + upper)
    return ch


def styled(text: str, rng: random.Random) -> str:
    """Each word of ASCII letters in a "fancy text" alphabet (mathematical bold, fullwidth or
    circled), as the generators that paste styled text into posts do."""
    out = []
    for word in _words(text):
        lower, upper = rng.choice(((_BOLD, _BOLD_UPPER), (_FULLWIDTH, _FULLWIDTH_UPPER), (_CIRCLED, _CIRCLED_UPPER)))
        out.append("".join(_style(ch, lower, upper) for ch in word))
    return " ".join(out)


def diacritics(text: str, rng: random.Random, share: float = 0.5) -> str:
    """About ``share`` of the ASCII letters given a combining accent, some of them two."""
    out = []
    for ch in text:
        out.append(ch)
        if ch.isascii() and ch.isalpha() and rng.random() < share:
            out.extend(rng.sample(MARKS, k=1 if rng.random() < 0.8 else 2))
    return "".join(out)


def leet(text: str, rng: random.Random, share: float = 0.5) -> str:
    """About ``share`` of the letters of words of four or more letters, after the first, swapped for
    the digit or sign leetspeak writes them with ("fr33 m0n3y"); at least one a word where one can
    be. (Short words and first letters are left: "7he" or "th3" reads like "7th" or "mp3".)"""
    out = []
    for word in _words(text):
        letters = len(word) >= 4 and word.isalpha()
        spots = [i for i, ch in enumerate(word) if i and ch.lower() in LEET] if letters else []
        if spots:
            chosen = {i for i in spots if rng.random() < share} or {rng.choice(spots)}
            word = "".join(rng.choice(LEET[ch.lower()]) if i in chosen else ch for i, ch in enumerate(word))
        out.append(word)
    return " ".join(out)


def symbols(text: str, rng: random.Random) -> str:
    """An emoji or symbol between two letters of each word of three or more characters ("fr🔥ee"),
    sometimes between every letter of a word of letters."""
    out = []
    for word in _words(text):
        spots = [i for i in range(1, len(word)) if word[i - 1].isalpha() and word[i].isalpha()]
        if len(word) >= 3 and spots:
            symbol = rng.choice(SYMBOLS)
            if word.isalpha() and rng.random() < 0.25:
                word = symbol.join(word)
            else:
                spot = rng.choice(spots)
                word = word[:spot] + symbol + word[spot:]
        out.append(word)
    return " ".join(out)


def separators(text: str, rng: random.Random) -> str:
    """Words of three or more letters spelt letter by letter with punctuation, a dash, a bullet, an
    ellipsis, a tab or a line break between the letters ("f,r,e,e"), words apart by three spaces
    (wider than the two spaces some words are spelt with)."""
    out = []
    for word in _words(text):
        if len(word) >= 3 and word.isalpha():
            word = rng.choice(SEPARATORS).join(word)
        out.append(word)
    return "   ".join(out)


def hooks(text: str, rng: random.Random, share: float = 0.3) -> str:
    """About ``share`` of the lowercase letters that have a hooked or stroked Latin form swapped for
    one ("ƒree ɱoney"); at least one a word where one can be."""
    out = []
    for word in _words(text):
        spots = [i for i, ch in enumerate(word) if ch in HOOKS]
        if spots:
            chosen = {i for i in spots if rng.random() < share} or {rng.choice(spots)}
            word = "".join(rng.choice(HOOKS[ch]) if i in chosen else ch for i, ch in enumerate(word))
        out.append(word)
    return " ".join(out)


TRICKS: dict[str, Callable[[str, random.Random], str]] = {
    "zero_width": zero_width,
    "homoglyphs": homoglyphs,
    "spaced": spaced,
    "styled": styled,
    "diacritics": diacritics,
    "leet": leet,
    "symbols": symbols,
    "separators": separators,
    "hooks": hooks,
}


def obfuscate(text: str, rng: random.Random, tricks: Sequence[str]) -> str:
    """``text`` rewritten by each named trick of :data:`TRICKS` in turn (raises KeyError on an
    unknown name). Spacing goes first whatever the order, since it spells out whole words, then
    separators (which leave a spaced-out word as it is)."""
    order = sorted(tricks, key=lambda name: (name != "spaced", name != "separators"))
    for name in order:
        text = TRICKS[name](text, rng)
    return text
