"""The text the prefilter scores, and the evasion signals that keep a text away from a skip.

A prefilter learns character n-grams, so a violation spelt with zero-width characters, look-alike
letters from other scripts, styled or accented letters, or spaced-out letters scores like harmless
text. :func:`prepare` gives the prefilter one canonical spelling (its *skeleton*) and says which
evasion tricks the original text shows, so the cascade sends flagged text to the model (which
always reads the original) instead of skipping it.

Skeleton: NFKC (parenthesised letters first: "⒡" is "f"); invisible characters removed; emoji and
symbols between two Latin letters removed ("fr🔥ee"); Latin, Greek and Cyrillic diacritics stripped
(as NFD then dropping the marks would, but without decomposing other scripts: Hangul, kana and
Indic text keep their form); hooked and stroked Latin letters NFD keeps whole ("ƒ", "đ") and
confusable letters mapped to the Latin letter they imitate (a curated subset of Unicode UTS #39
``confusables.txt``); case-folded; leetspeak spelt out in words of two or more letters ("fr33
m0n3y", "vi@gra", "$pam"; numbers, prices, times, units and ordinals such as "5pm", codes with
other digits such as "covid19", two letters and a digit such as "mp3", and e-mail addresses kept);
runs of three or more single letters joined, apart by one mixed separator or by the same separator
(spaces, a line break, punctuation, dashes, bullets, an ellipsis) each time ("f r e e  m o n e y",
"f,r,e,e", "f. r. e. e." -> "free money", "free", "free.").

Flags (:data:`FLAGS`), each chosen to be rare on genuine text in any language, since a flag costs a
model call: ``invisible_chars`` (an invisible character outside the places scripts, emoji and
bidirectional text need one), ``mixed_script`` (one word mixing scripts that UTS #39's moderately
restrictive level forbids, or a whole word, or whole text, spelt only in look-alikes),
``spaced_letters`` (a joined run; short dotted abbreviations such as "U.S.A." or "J. R. R." and
lists of consecutive letters such as "a, b, c" or "x/y/z" are joined but not flagged),
``styled_letters`` (two or more mathematical, fullwidth, circled, parenthesised, superscript or
small capital letters in a word, or one glued to plain letters, fullwidth forms being native in CJK
text; or a hooked letter in a word of plain letters, "ƒree", except the letters of living
orthographies, đ ł ħ ø ŧ ɓ ɗ ƙ ƴ, and in text using the African reference alphabet),
``unusual_chars`` (private use, unassigned in this Python's Unicode version outside the emoji and
CJK planes, lone surrogates, marks stacked on one base, plain Latin letters carrying marks that no
precomposed letter has, many plain letters followed by separate marks, or an emoji or symbol
between two letters of a word). Leetspeak raises no flag: it is common in casual text.

Known limits, left open: reversed text, words split in chunks of two or more letters ("fr ee"),
regional indicator letters ("🇫🇷🇪🇪"), leetspeak in three-letter words that start or end with
the digit ("7he", "th3": read as "7th" and "mp3") and in spaced-out letters ("f r 3 3").

Contract: pure, deterministic, no I/O, and total: any ``str`` (empty, lone surrogates, control
characters, megabytes) gives a result and never raises, because it runs on every event of the hot
path. ASCII text takes a fast path (lower-casing and one regex); other text pays per distinct
character, not per character; leetspeak and single letters are looked for on a byte "shape" of
the text first.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable

from streams.cascade.charsets import AFRICAN_LETTERS as _AFRICAN_LETTERS
from streams.cascade.charsets import BEFORE_NFKC as _BEFORE_NFKC
from streams.cascade.charsets import CJK as _CJK
from streams.cascade.charsets import CONFUSABLE_SCRIPTS as _CONFUSABLE_SCRIPTS
from streams.cascade.charsets import FOLD as _FOLD
from streams.cascade.charsets import HOOKED as _HOOKED
from streams.cascade.charsets import INVISIBLE_RANGES as _INVISIBLE_RANGES
from streams.cascade.charsets import MARK_RANGES as _MARK_RANGES
from streams.cascade.charsets import MARKS as _MARKS
from streams.cascade.charsets import NAME_SCRIPT as _NAME_SCRIPT
from streams.cascade.charsets import NATIVE_HOOKED as _NATIVE_HOOKED
from streams.cascade.charsets import STYLED as _STYLED
from streams.cascade.spelling import finish

__all__ = ["FLAGS", "evasion_flags", "prepare", "skeleton"]

FLAGS: tuple[str, ...] = ("invisible_chars", "mixed_script", "spaced_letters", "styled_letters", "unusual_chars")

_WHOLE_TEXT_MIN = 20  # look-alike letters a text needs before "all of them are look-alikes" is a signal
_WHOLE_GREEK_MIN = 32  # Greek shares most letters with Latin: genuine short Greek passes that test

_IN_WORD = re.compile(r"(?<=[^\W\d_])[^\w\s]+(?=[^\W\d_])")  # punctuation or symbols inside a word
_FLAGGED_HOOKS = frozenset(_HOOKED) - _NATIVE_HOOKED
_UNIT = re.compile(r"[pnμumkMGT]?[Ωω]|μ[a-zA-Z]{1,3}")  # micro and ohm signs (NFKC makes them Greek)


def _char_class(spans: Iterable[tuple[int, int]]) -> str:
    """A regex character class from inclusive code point ranges."""
    return "[" + "".join(f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in spans) + "]"


_FOLDED = frozenset(map(chr, _FOLD))
# Letters whose skeleton is one Latin letter.
_LOOKALIKE = frozenset(chr(cp) for cp, out in _FOLD.items() if out is not None and len(out) == 1 and out.isascii())
_INVISIBLE_ONLY = dict.fromkeys(cp for lo, hi in _INVISIBLE_RANGES for cp in range(lo, hi + 1))
_INVISIBLE_RUNS = re.compile(_char_class(_INVISIBLE_RANGES) + "+")
_STYLED_RUNS = re.compile(_char_class((cp, cp) for cp in sorted(_STYLED)) + "+")
_MARK_CLASS = _char_class(_MARK_RANGES)
_STACKED = re.compile(_MARK_CLASS + "{2,}")
_BARE_MARK = re.compile("[A-Za-z]" + _MARK_CLASS)
_ASCII_LETTER = re.compile("[A-Za-z]")
_DECORATED_PERCENT = 15  # of a text's plain letters, followed by a separate combining mark
_WORD = re.compile(r"[^\W\d_]+")
_ASCII_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_ASCII_SET = frozenset(map(chr, range(128)))

def _letters_by_script() -> dict[str, frozenset[str]]:
    """The letters of Latin and of the scripts imitating it, for whole-word script checks."""
    found: dict[str, set[str]] = {}
    for lo, hi in ((0x0041, 0x007A), (0x00C0, 0x058F), (0x13A0, 0x13FF), (0x1C80, 0x1C8F), (0x1D00, 0x1DBF),
                   (0x1E00, 0x1FFF), (0x2C60, 0x2C7F), (0xA640, 0xA69F), (0xA720, 0xA7FF), (0xAB30, 0xABBF)):
        for ch in map(chr, range(lo, hi + 1)):
            script = _script(ch) if ch.isalpha() else None
            if script == "LATIN" or script in _CONFUSABLE_SCRIPTS:
                found.setdefault(script, set()).add(ch)
    return {script: frozenset(letters) for script, letters in found.items()}


_INVISIBLE, _STYLE, _UNUSUAL, _MARK, _EARLY, _SYMBOL, _HOOK = 1, 2, 4, 8, 16, 32, 64


@functools.lru_cache(maxsize=8192)
def _script(ch: str) -> str | None:
    """The script of a letter, from the Unicode name of its NFKC form ("CYRILLIC SMALL LETTER A"
    -> CYRILLIC);
    None for letters every script uses (modifier letters, the kana prolonged sound mark)."""
    folded = unicodedata.normalize("NFKC", ch)  # styled letters belong to the script they imitate
    words = unicodedata.name(folded[0] if folded else ch, "").split()
    if not words:
        return None
    if words[0] in ("HALFWIDTH", "FULLWIDTH") and len(words) > 1:
        return _NAME_SCRIPT.get(words[1], words[1])
    return _NAME_SCRIPT.get(words[0], words[0])


@functools.lru_cache(maxsize=65536)
def _char_info(ch: str) -> int:
    """What one non-ASCII character of the original text can signal, as bits."""
    cp = ord(ch)
    bits = _INVISIBLE if cp in _INVISIBLE_ONLY else 0
    if cp in _STYLED:
        bits |= _STYLE
    if ch in _MARKS:
        bits |= _MARK
    if cp in _BEFORE_NFKC:
        bits |= _EARLY
    if ch in _FLAGGED_HOOKS:
        bits |= _HOOK
    if _symbol(ch):
        bits |= _SYMBOL
    category = unicodedata.category(ch)
    if category in ("Co", "Cs") or (category == "Cn" and not (0x1F000 <= cp <= 0x1FAFF or 0x20000 <= cp <= 0x3FFFF)):
        bits |= _UNUSUAL
    return bits


_SCRIPT_LETTERS = _letters_by_script()


def _latin_like(ch: str) -> bool:
    """An ASCII letter or digit, or a letter of Latin or of a script imitating it."""
    if ch.isascii():
        return ch.isalnum()
    script = _script(ch) if ch.isalpha() else None
    return script == "LATIN" or script in _CONFUSABLE_SCRIPTS


def _other_script(ch: str) -> bool:
    """A letter or mark of a script that uses joiners and word-break hints (Arabic, Indic, Thai, CJK)."""
    if ch.isascii() or not (ch.isalpha() or unicodedata.category(ch)[0] == "M"):
        return False
    script = _script(ch)
    return script is not None and script != "LATIN" and script not in _CONFUSABLE_SCRIPTS


def _symbol(ch: str) -> bool:
    return ch != "" and (unicodedata.category(ch) in ("So", "Sk") or 0x1F3FB <= ord(ch) <= 0x1F3FF)


def _benign(text: str, start: int, end: int) -> bool:
    """A run of invisible characters where a script, an emoji sequence or bidi text needs it."""
    run = text[start:end]
    before = text[start - 1] if start else ""
    after = text[end] if end < len(text) else ""
    if run[0] >= "\U000e0000" and run[-1] <= "\U000e007f":  # tags: only a subdivision flag's
        return before == "\U0001f3f4" and run[-1] == "\U000e007f" and 2 <= len(run) <= 8
    joined = _symbol(before) and (_symbol(after) or not after)
    for i, ch in enumerate(run):
        cp = ord(ch)
        if cp == 0xFEFF and start + i == 0:
            continue
        if 0xFE00 <= cp <= 0xFE0F:  # variation selector: emoji (ℹ️ too) and CJK presentation, keycaps
            if before and not (before.isalpha() and _latin_like(before) and not "\u2100" <= before <= "\u214f"):
                continue
            return False
        if 0xE0100 <= cp <= 0xE01EF:  # ideographic variation sequences
            if before and _script(before) == "HAN":
                continue
            return False
        if cp in (0x200E, 0x200F, 0x061C) or 0x202A <= cp <= 0x202C or 0x2066 <= cp <= 0x2069:
            if _has_rtl(text):
                continue
            return False
        if cp == 0x2800:
            if 0x2801 <= ord(before or "\0") <= 0x28FF or 0x2801 <= ord(after or "\0") <= 0x28FF:
                continue
            return False
        if cp in (0x00AD, 0x115F, 0x1160, 0x3164, 0xFFA0, 0x202D, 0x202E) or 0x206A <= cp <= 0x206F:
            return False
        if (cp == 0x200D and joined) or _other_script(before) or _other_script(after):
            continue
        return False
    return True


def _has_rtl(text: str) -> bool:
    return any(unicodedata.bidirectional(ch) in ("R", "AL") for ch in set(text))


def _invisible_flag(text: str) -> bool:
    return any(not _benign(text, m.start(), m.end()) for m in _INVISIBLE_RUNS.finditer(text))


def _styled_flag(text: str, cjk: bool) -> bool:
    for m in _STYLED_RUNS.finditer(text):
        run, start, end = m.group(), m.start(), m.end()
        if cjk:
            run = "".join(ch for ch in run if not 0xFF00 <= ord(ch) <= 0xFFEF)
        if not run:
            continue
        before = text[start - 1] if start else ""
        after = text[end] if end < len(text) else ""
        if before.isdigit():  # ordinals: 1ˢᵗ, 2ⁿᵈ
            continue
        tiny = all(0x02B0 <= ord(ch) <= 0x02FF or 0x1D2C <= ord(ch) <= 0x1DBF or 0x2070 <= ord(ch) <= 0x209F
                   for ch in run)
        glued = not tiny and (before in _ASCII_LETTERS or after in _ASCII_LETTERS)
        if len(run) >= 2 or glued:
            return True
    return False


def _unusual_flag(text: str, base: str) -> bool:
    """Marks stacked on one letter, or plain Latin letters carrying marks that no precomposed
    letter has, or decorated as no language is: typed accents arrive precomposed (NFC), and even
    accent-heavy languages decorate few letters of a text with separate marks."""
    if _STACKED.search(base) is not None or len(_BARE_MARK.findall(base)) >= 2:
        return True
    marked = len(_BARE_MARK.findall(text))
    return marked >= 3 and marked * 100 >= _DECORATED_PERCENT * len(_ASCII_LETTER.findall(text))


def _mixed_flag(base: str, letters: set[str], has_latin: bool) -> bool:
    """A script that imitates Latin sharing a word with another script, a word spelt only in
    look-alikes inside Latin text, or a whole text spelt only in look-alikes."""
    scripts = set(map(_script, letters))
    scripts.discard(None)
    imitating = scripts & _CONFUSABLE_SCRIPTS
    if not imitating:
        return False  # Latin beside Thai, Arabic or CJK in one word is how those texts are written
    if (has_latin or len(scripts) > 1) and _mixed_words(base):
        return True
    lookalikes = [ch for ch in letters if _script(ch) in _CONFUSABLE_SCRIPTS]
    if _LOOKALIKE.issuperset(lookalikes):
        needed = _WHOLE_GREEK_MIN if imitating == {"GREEK"} else _WHOLE_TEXT_MIN
        return sum(base.count(ch) for ch in lookalikes) >= needed
    return False


def _mixed_words(base: str) -> bool:
    latin = other = lookalike_words = 0
    for word in _WORD.findall(base):
        if word.isascii():
            latin += len(word)
            continue
        scripts = _word_scripts(word)
        if len(scripts) > 1:
            if scripts & _CONFUSABLE_SCRIPTS and not _UNIT.fullmatch(word):
                return True
            in_latin = sum(1 for ch in word if _script(ch) == "LATIN")
            latin, other = latin + in_latin, other + len(word) - in_latin
        elif "LATIN" in scripts:
            latin += len(word)
        else:
            other += len(word)
            if len(word) >= 2 and scripts <= _CONFUSABLE_SCRIPTS and _LOOKALIKE.issuperset(word):
                lookalike_words += 1
    return lookalike_words > 0 and latin > other


def _word_scripts(word: str) -> set[str | None]:
    first = _script(word[0])
    if first is not None and first in _SCRIPT_LETTERS and _SCRIPT_LETTERS[first].issuperset(word):
        return {first}  # the common case, in one set operation
    scripts = set(map(_script, word))
    scripts.discard(None)
    return scripts


def _split_words(base: str) -> tuple[str, bool]:
    """Symbols and emoji between two Latin letters ("fr🔥ee") removed, and whether there was one."""
    split = False

    def drop(m: re.Match[str]) -> str:
        nonlocal split
        run = m.group()
        if all(_symbol(ch) and ord(ch) > 0xFF for ch in run) and _latin_letter(base[m.start() - 1]) \
                and _latin_letter(base[m.end()]):
            split = True
            return ""
        return run

    return _IN_WORD.sub(drop, base), split


def _latin_letter(ch: str) -> bool:
    """A Latin letter or a look-alike of one."""
    return ch.isalpha() and (ch.isascii() or ch in _LOOKALIKE or _script(ch) == "LATIN")


def _hooked_flag(base: str) -> bool:
    """A hooked or stroked letter in a word otherwise of plain ASCII letters ("ƒree")."""
    return any(not word.isascii() and _ASCII_LETTER.search(word) is not None
               and all(ch.isascii() or ch in _FLAGGED_HOOKS for ch in word) for word in _WORD.findall(base))


def prepare(text: str) -> tuple[str, tuple[str, ...]]:
    """The text the prefilter scores and the evasion flags the original text shows.

    Args:
        text: any string, as decoded from the event.

    Returns:
        ``(skeleton, flags)``: the normalised text (see the module docstring), and the sorted
        names from :data:`FLAGS` found in ``text``; empty for ordinary text in any language.
    """
    flags: set[str] = set()
    if text.isascii():  # the common case: no invisible, styled, foreign or accented letter
        folded = finish(text.lower(), flags)
        return folded, tuple(flags)
    chars = set(text)
    has_latin = not chars.isdisjoint(_ASCII_LETTERS)
    chars.difference_update(_ASCII_SET)
    bits = 0
    for ch in chars:
        bits |= _char_info(ch)
    base = unicodedata.normalize("NFKC", text.translate(_BEFORE_NFKC) if bits & _EARLY else text)
    if bits & _INVISIBLE:
        base = base.translate(_INVISIBLE_ONLY)
        if _invisible_flag(text):
            flags.add("invisible_chars")
    if base != text:
        chars = set(base)
        has_latin = not chars.isdisjoint(_ASCII_LETTERS)
        chars.difference_update(_ASCII_SET)
    letters = {ch for ch in chars if ch.isalpha()}
    if bits & _STYLE and _styled_flag(text, any(_script(ch) in _CJK for ch in letters)):
        flags.add("styled_letters")
    if bits & _UNUSUAL or (bits & _MARK and _unusual_flag(text, base)):
        flags.add("unusual_chars")
    if letters and _mixed_flag(base, letters, has_latin):
        flags.add("mixed_script")
    if bits & _HOOK and _AFRICAN_LETTERS.isdisjoint(letters) and _hooked_flag(base):
        flags.add("styled_letters")
    if bits & _SYMBOL:
        base, split = _split_words(base)
        if split:
            flags.add("unusual_chars")
    folded = (base.translate(_FOLD) if not _FOLDED.isdisjoint(chars) else base).casefold()
    return finish(folded, flags), tuple(sorted(flags))


def skeleton(text: str) -> str:
    """The normalised text the prefilter scores (see :func:`prepare`)."""
    return prepare(text)[0]


def evasion_flags(text: str) -> tuple[str, ...]:
    """The sorted evasion flags of ``text`` (see :func:`prepare`)."""
    return prepare(text)[1]
