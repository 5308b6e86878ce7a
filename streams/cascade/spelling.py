"""Spellings that hide a word, spelt back for the prefilter: runs of single letters ("f r e e",
"f.r.e.e", "f, r, e, e") joined, and leetspeak ("fr33", "vi@gra", "$pam") spelt with its letters.
Part of the normaliser (:mod:`streams.cascade.normalise`), on ASCII-folded text: both rewrites only
run where a text's shape (a byte a character) can hold them, which keeps plain text on a fast path.
"""

from __future__ import annotations

import re

from streams.cascade.charsets import SPACING_PUNCTUATION as _SPACING_PUNCTUATION

_SEP = " .\\-_*|/\u00b7"  # separators a run of single letters may mix ("f.r-e e")
# ... or the same separator between every letter: spaces, a line break, punctuation or an ellipsis.
_SAME_SEP = f"[ \\t\u1680]{{1,3}}|\\r?\\n|[ ]?(?:\\.{{2,3}}|[{_SEP.strip()}{_SPACING_PUNCTUATION}])[ \\t]?"
_RUN = re.compile(f"(?<![^\\W_])(?:[a-z](?:[{_SEP}][a-z]){{2,}}|[a-z](?P<sep>{_SAME_SEP})[a-z](?:(?P=sep)[a-z])+)"
                  "(?![^\\W_])")
# The shape of a text, a byte a character (ASCII-encoded, "?" for others): a for a letter, 1 for a
# digit, @ or $ that leetspeak uses for a letter, d for another digit, - for anything else.
_SHAPES = bytes.maketrans(bytes(range(256)), bytes(
    (b"a" if chr(c).isalpha() else b"1" if chr(c) in "013457@$" else b"d" if chr(c).isdigit()
     else b"-")[0] if c < 128 else b"-"[0] for c in range(256)))
_SHAPE_RUN = re.compile(rb"-a-+a-+a-")  # necessary for a run of single letters
_NOT_LETTER = re.compile("[^a-z]+")
_LEET_AT = re.compile("(?<=[a-z0-9])@(?=[a-z0-9])")
_LEET_DOLLAR = re.compile("(?:^|(?<=[a-z0-9]))\\$(?=[a-z0-9])|(?<=[a-z0-9])\\$$")
_LEET_DIGITS = str.maketrans("013457", "oieast")
_GAP = re.compile("[ \\t]{2,}")
_WIDE_GAP = re.compile(" {2,}")


def _abbreviation(run: str, following: str) -> bool:
    """"u.s.a.", "a.k.a." or "J. R. R.": up to four letters dotted, or three dotted and spaced, with
    the closing dot."""
    return following == "." and len(run) <= 7 and set(_NOT_LETTER.findall(run)) in ({"."}, {". "})


def _alphabet(letters: str) -> bool:
    """"abc" or "xyz": a run of consecutive letters is a list ("a, b, c", "x/y/z"), not a word."""
    return all(ord(b) - ord(a) == 1 for a, b in zip(letters, letters[1:], strict=False))


def _join_spaced(text: str) -> tuple[str, bool]:
    """Runs of single letters joined (runs apart by a gap of spaces are words of one phrase, and the
    gaps then narrow to one space), and whether one of them was a sign of evasion rather than an
    abbreviation or a list, which are joined for scoring alone."""
    runs = list(_RUN.finditer(text))
    flagged, out, pos, i = False, [], 0, 0
    while i < len(runs):
        j = i
        while j + 1 < len(runs) and _GAP.fullmatch(text, runs[j].end(), runs[j + 1].start()):
            j += 1
        first, last = runs[i], runs[j]
        words = [_NOT_LETTER.sub("", m.group()) for m in runs[i:j + 1]]
        if j > i or not (_abbreviation(first.group(), text[last.end():last.end() + 1]) or _alphabet(words[0])):
            flagged = True
        out += [text[pos:first.start()], " ".join(words)]
        pos, i = last.end(), j + 1
    joined = "".join(out) + text[pos:]
    return (_WIDE_GAP.sub(" ", joined) if flagged else joined), flagged


def _spaced(folded: str, flags: set[str]) -> str:
    joined, spaced = _join_spaced(folded)
    if spaced:
        flags.add("spaced_letters")
    return joined


def _unleet_token(token: str, after: str) -> str:
    """A word with digits, @ or $ for letters spelt with the letters, but the name of an e-mail
    address keeps its @."""
    if "@" in token and not (after[:1] == "." and after[1:].isalpha()):
        token = _LEET_AT.sub("a", token)
    if "$" in token:
        token = _LEET_DOLLAR.sub("s", token)
    return token.translate(_LEET_DIGITS)


def _unleet(text: str, shape: bytes) -> str:
    """Leetspeak spelt out in each word where a letter meets a digit, @ or $ ("fr33" -> "free"), if
    the word has two letters or more; kept whole if it has a digit no letter looks like ("covid19"),
    is a number with a unit or ordinal of up to three letters ("5pm", "1st", "10kg") or two letters
    and a digit ("mp3").
    ``shape``: the text's shape with a "-" either side, so shape index i is text index i - 1."""
    out, pos = [], 0
    before, after = shape.find(b"a1"), shape.find(b"1a")
    while before >= 0 or after >= 0:
        spot = before if after < 0 or 0 <= before < after else after
        start, end = shape.rfind(b"-", 0, spot), shape.find(b"-", spot)
        word = shape[start + 1:end]
        if (word.count(b"a") >= 2 and b"d" not in word and word != b"aa1"
                and not (word[0] == 49 and text[start].isdigit() and word.lstrip(b"1") in (b"a", b"aa", b"aaa"))):
            out += [text[pos:start], _unleet_token(text[start:end - 1], text[end - 1:end + 1])]
            pos = end - 1
        if 0 <= before < end:
            before = shape.find(b"a1", end)
        if 0 <= after < end:
            after = shape.find(b"1a", end)
    return "".join(out) + text[pos:] if out else text


def finish(folded: str, flags: set[str]) -> str:
    """A case-folded text with leetspeak spelt out, then runs of single letters joined (adding
    ``spaced_letters`` to ``flags`` when a run was a sign of evasion), each only where the text's
    shape can hold one (spelling out leetspeak makes no single letter, so the shape still tells)."""
    shape = f"-{folded}-".encode("ascii", "replace").translate(_SHAPES)
    if b"1" in shape and (b"a1" in shape or b"1a" in shape):
        folded = _unleet(folded, shape)
    if _SHAPE_RUN.search(shape) is not None:
        folded = _spaced(folded, flags)
    return folded
