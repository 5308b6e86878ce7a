"""Which characters are what, for the normaliser (:mod:`streams.cascade.normalise`): the letters
other scripts use to imitate Latin ones (after Unicode UTS #39 ``confusables.txt``), styled and
invisible characters, combining marks, and the scripts that may not share a word with Latin.
The tables derived from those lists are built once, at import; the rules live in the normaliser.
"""

from __future__ import annotations

import unicodedata

# Look-alikes of each lowercase Latin letter, after UTS #39 confusables.txt (prototypes folded to
# lowercase, since the skeleton is case-folded). Both cases of a source letter are listed where
# they imitate different Latin letters (Greek eta: H and n); otherwise the other case is derived.
# Digits that pass for letters (0 for o, 3 for e) are left alone: they are digits in genuine text.
LOOKALIKES: dict[str, str] = {
    "a": "аАαΑɑᴀꓮᎪ",
    "b": "вВβΒʙЬƅᏴꓐ",
    "c": "сСϲϹᴄᏟꓚ",
    "d": "ԁᴅᎠꓓ",
    "e": "еЕεΕᴇᎬꓰҽɛ",
    "f": "ꜰꓝϜ",
    "g": "ɡɢԍᏀꓖց",
    "h": "һҺнНΗʜᎻꓧհ",
    "i": "іІιΙıɩɪᎥꓲ",
    "j": "јЈϳᴊᎫꓙȷ",
    "k": "кКκΚᴋᏦꓗ",
    "l": "ӏӀʟᏞꓡłƚԼ",
    "m": "мМΜᴍᎷꓟ",
    "n": "ηΝɴոꓠ",
    "o": "оОοΟᴏօՕꓳø",
    "p": "рРρΡᴘᏢꓑ",
    "q": "ԛԚզ",
    "r": "гʀᎡꓣɾ",
    "s": "ѕЅꜱᏚꓢՏ",
    "t": "тТτΤᴛᎢꓔ",
    "u": "υսՍᴜꓴμ",
    "v": "νѵѴᴠᏙꓦ",
    "w": "ԝԜѡωᴡᏔᎳꓪ",
    "x": "хХχΧꓫ",
    "y": "уУүҮγΥʏᎩꓬ",
    "z": "ΖᴢᏃꓜ",
}
# Letters styled by symbol blocks that NFKC leaves alone (negative circled and squared capitals)
# or spells as several characters (parenthesised letters: "⒡" is "(f)").
STYLED_EXTRA: dict[str, str] = {
    **{chr(0x1F150 + i): chr(0x61 + i) for i in range(26)},
    **{chr(0x1F170 + i): chr(0x61 + i) for i in range(26)},
    **{chr(0x249C + i): chr(0x61 + i) for i in range(26)},
    **{chr(0x1F110 + i): chr(0x61 + i) for i in range(26)},
}
# Latin letters with hooks, strokes and bars that are letters of living orthographies (Vietnamese,
# Croatian and Serbian đ, Polish ł, Maltese ħ, Nordic ø, Sami ŧ, Hausa and Fula ɓ ɗ ƙ ƴ): folded
# like every hooked letter, but not a sign of styling in a word of plain letters.
NATIVE_HOOKED = frozenset("ĐđŁłĦħØøŦŧƁɓƊɗƘƙƳƴ")
# Letters of the African reference alphabet: a text using them writes a language (Ewe, Akan, Fula ...)
# whose orthography has hooked letters too.
AFRICAN_LETTERS = frozenset("ƐɛƆɔŊŋƉɖƏəƔɣƩʃƷʒ")
# Separators spelt-out words use between letters besides the ones a mixed run may use: one of these
# (optionally with a space either side), or the same whitespace, between every letter of a run.
SPACING_PUNCTUATION = ",+~':;\u2010\u2011\u2012\u2013\u2014\u2018\u2019\u2022\u2027\u2044\u2219\u22c5\u30fb"
SMALL_CAPITALS = "ᴀʙᴄᴅᴇꜰɢʜɪᴊᴋʟᴍɴᴏᴘʀꜱᴛᴜᴠᴡʏᴢ"  # "fancy text" alphabets; Latin script, so not mixed
MARK_RANGES = ((0x0300, 0x036F), (0x0483, 0x0489), (0x1AB0, 0x1AFF), (0x1DC0, 0x1DFF), (0x20D0, 0x20FF),
                (0xFE20, 0xFE2F))  # the generic diacritics of Latin, Greek and Cyrillic (and of Zalgo)
# Invisible characters: default-ignorable format characters (Cf, but not the visible prepended
# Arabic number signs), plus invisible letters and marks (grapheme joiner, variation selectors,
# Mongolian selectors, Hangul fillers, the braille blank).
INVISIBLE_RANGES = ((0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x180B, 0x180F),
                     (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x2800, 0x2800), (0x3164, 0x3164),
                     (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF9, 0xFFFB), (0x13430, 0x1343F),
                     (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF))
# Scripts whose letters imitate Latin ones: Latin may not share a word with them.
CONFUSABLE_SCRIPTS = frozenset({"CYRILLIC", "GREEK", "COPTIC", "ARMENIAN", "CHEROKEE", "LISU", "CANADIAN",
                                 "TIFINAGH", "VAI", "OLD", "NKO"})
CJK = frozenset({"HAN", "HIRAGANA", "KATAKANA", "HANGUL", "BOPOMOFO"})
NAME_SCRIPT = {"CJK": "HAN", "IDEOGRAPHIC": "HAN", "KATAKANA-HIRAGANA": None, "MODIFIER": None,
                "COMBINING": None}


# Derived tables.

def _confusables() -> dict[str, str]:
    table: dict[str, str] = {}
    for latin, sources in LOOKALIKES.items():
        table.update(dict.fromkeys(sources, latin))
    for source, latin in list(table.items()):
        for other in (source.lower(), source.upper()):
            if len(other) == 1 and not other.isascii():
                table.setdefault(other, latin)
    table.update(STYLED_EXTRA)
    return table


CONFUSABLE = _confusables()
# Look-alikes that NFKC would turn into a different letter (lunate sigma, drawn c, becomes sigma):
# mapped before NFKC.
BEFORE_NFKC = {ord(ch): latin for ch, latin in CONFUSABLE.items() if unicodedata.normalize("NFKC", ch) != ch}
MARKS = frozenset(chr(cp) for lo, hi in MARK_RANGES for cp in range(lo, hi + 1))
FOLD_RANGES = ((0x00C0, 0x02AF), (0x0370, 0x058F), (0x13A0, 0x13FF), (0x1C80, 0x1C8F), (0x1D00, 0x1DBF),
                (0x1E00, 0x1FFF), (0x2C60, 0x2C7F), (0xA640, 0xA69F), (0xA720, 0xA7FF), (0xAB30, 0xABBF))


def _hooked() -> dict[str, str]:
    """Latin letters with a hook, stroke or bar that NFD leaves whole ("LATIN SMALL LETTER F WITH
    HOOK"), mapped to their base letter, as UTS #39 maps many of them."""
    table: dict[str, str] = {}
    for lo, hi in FOLD_RANGES:
        for ch in map(chr, range(lo, hi + 1)):
            words = unicodedata.name(ch, "").split()
            if (len(words) >= 5 and words[:3] in (["LATIN", "SMALL", "LETTER"], ["LATIN", "CAPITAL", "LETTER"])
                    and len(words[3]) == 1 and words[4] in ("WITH", "BAR") and "LETTER" not in words[4:]
                    and len(unicodedata.normalize("NFD", ch)) == 1):
                table[ch] = words[3].lower()
    return table


def _fold_letter(ch: str) -> str:
    """A letter without its diacritics, its look-alikes and hooked forms mapped, case-folded (twice:
    folding can reveal a look-alike, as Cyrillic rounded ve folds to ve)."""
    out = ch
    for _ in range(2):
        out = "".join(CONFUSABLE.get(c, HOOKED.get(c, c)) for c in unicodedata.normalize("NFD", out)
                      if c not in MARKS)
        out = out.casefold()
    return out


def _fold_table() -> dict[int, str | None]:
    table: dict[int, str | None] = {ord(ch): latin for ch, latin in CONFUSABLE.items()}
    for lo, hi in FOLD_RANGES:
        for cp in range(lo, hi + 1):
            ch = chr(cp)
            folded = _fold_letter(ch)
            if folded != ch.casefold() and not any(unicodedata.combining(c) for c in folded):
                table[cp] = folded
    for lo, hi in (*MARK_RANGES, *INVISIBLE_RANGES):
        table.update(dict.fromkeys(range(lo, hi + 1)))
    return table


def _styled_codes() -> list[int]:
    """Letters that NFKC turns into one ASCII letter (mathematical, fullwidth, circled,
    superscript ...), Latin small capitals and the negative squared and circled capitals."""
    codes = {ord(c) for c in SMALL_CAPITALS} | {ord(c) for c in STYLED_EXTRA}
    for lo, hi in ((0x02B0, 0x02FF), (0x1D00, 0x1DBF), (0x2070, 0x209F), (0x2100, 0x214F), (0x2460, 0x24FF),
                   (0x2C7C, 0x2C7D), (0xFF00, 0xFFEF), (0x1D400, 0x1D7FF), (0x1F100, 0x1F1FF)):
        for cp in range(lo, hi + 1):
            folded = unicodedata.normalize("NFKC", chr(cp))
            if len(folded) == 1 and folded.isascii() and folded.isalpha():
                codes.add(cp)
    return sorted(codes)


HOOKED = _hooked()
FOLD = _fold_table()
STYLED = frozenset(_styled_codes())
