"""The prefilter's normalised text and evasion flags: obfuscated violations fold back to their plain
spelling and are flagged; genuine text in any language is not; no input makes it raise."""

from __future__ import annotations

import itertools
import random
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.authoring.datasets import load_dataset
from streams.cascade.normalise import FLAGS, evasion_flags, prepare, skeleton
from streams.devtools.obfuscate import (
    TRICKS,
    diacritics,
    homoglyphs,
    hooks,
    leet,
    obfuscate,
    separators,
    spaced,
    styled,
    symbols,
    zero_width,
)

POLICIES = Path(__file__).resolve().parents[3] / "policies"

# Violating-sounding phrases whose key words are in none of the golden sets.
PHRASES = (
    "wire the deposit to my crypto wallet",
    "smuggle ammunition over the border tonight",
    "buy counterfeit banknotes and launder the ransom",
    "Forged Diplomas Shipped Discreetly Worldwide",
)
SEEDS = range(6)
TRICK_FLAG = {"zero_width": "invisible_chars", "homoglyphs": "mixed_script", "spaced": "spaced_letters",
              "styled": "styled_letters", "symbols": "unusual_chars", "separators": "spaced_letters",
              "hooks": "styled_letters"}


def test_flag_names_are_the_contract() -> None:
    assert FLAGS == ("invisible_chars", "mixed_script", "spaced_letters", "styled_letters", "unusual_chars")


@pytest.mark.parametrize("trick", sorted(TRICK_FLAG))
@pytest.mark.parametrize("phrase", PHRASES)
def test_each_trick_folds_back_and_is_flagged(trick: str, phrase: str) -> None:
    for seed in SEEDS:
        attacked = TRICKS[trick](phrase, random.Random(seed))
        assert attacked != phrase
        normalised, flags = prepare(attacked)
        assert normalised == skeleton(phrase), (trick, seed, attacked)
        assert TRICK_FLAG[trick] in flags, (trick, seed, attacked)
        assert set(flags) <= set(FLAGS)


@pytest.mark.parametrize("phrase", PHRASES)
def test_accents_fold_back_and_decoration_is_unusual(phrase: str) -> None:
    for seed in SEEDS:
        attacked = diacritics(phrase, random.Random(seed))
        assert skeleton(attacked) == skeleton(phrase)
        assert evasion_flags(attacked) == ("unusual_chars",)
        light = unicodedata.normalize("NFC", diacritics(phrase, random.Random(seed), share=0.1))
        assert skeleton(light) == skeleton(phrase)
        assert set(evasion_flags(light)) <= {"unusual_chars"}


@pytest.mark.parametrize("phrase", PHRASES)
def test_leetspeak_folds_back_without_a_flag(phrase: str) -> None:
    """Leetspeak is common in casual text: the skeleton spells it out, and no flag is raised."""
    for seed in SEEDS:
        attacked = leet(phrase, random.Random(seed))
        assert attacked != phrase
        assert prepare(attacked) == (skeleton(phrase), ())


@pytest.mark.parametrize(("text", "plain"), [
    ("fr33 m0n3y", "free money"), ("p0rn", "porn"), ("s3x", "sex"), ("v1agra", "viagra"), ("vi@gra", "viagra"),
    ("$pam", "spam"), ("fr\U0001d7d1\U0001d7d1", "free"), ("l33t h4x0r", "leet haxor"), ("ca$h", "cash"),
    ("banknot3$", "banknotes"), ("5muggle", "smuggle"), ("FR33 M0N3Y!", "free money!"), ("d1e.", "die."),
])
def test_leetspeak_words_are_spelt_out(text: str, plain: str) -> None:
    assert prepare(text) == (plain, ())


@pytest.mark.parametrize("text", [
    "paid $5 at 10:30, then $12.50 for 2 mp3 files, a 4k tv and a ps5 on the 1st at 5pm (10kg, 3rd, 4th)",
    "covid19 b2b h264 x86 i18n rtx3080 order #a-1234 v1.2.3 call 555-1234 or +44 20 7946 0958",
    "mail john@example.com or @john, 100% sure, 3x faster, 1990s, 24/7, 3d",
])
def test_numbers_prices_times_and_short_codes_are_kept(text: str) -> None:
    assert prepare(text) == (text, ())


@pytest.mark.parametrize("text", ["f\U0001f525r\U0001f525e\U0001f525e", "fr\U0001f525ee", "fr\u2764\ufe0fee",
                                  "fr\U0001f44d\U0001f3fdee", "fr\U0001f468\u200d\U0001f4bbee", "fr\u2b50ee",
                                  "fr\u2764\ufe0f\u200bee"])
def test_emoji_inside_a_word_is_removed_and_unusual(text: str) -> None:
    normalised, flags = prepare(text)
    assert normalised == "free"
    assert "unusual_chars" in flags


@pytest.mark.parametrize("text", [
    "f,r,e,e", "f+r+e+e", "f~r~e~e", "f'r'e'e", "f:r:e:e", "f\u2013r\u2013e\u2013e", "f\u2010r\u2010e\u2010e",
    "f\u2022r\u2022e\u2022e", "f\u30fbr\u30fbe\u30fbe", "f\u2044r\u2044e\u2044e", "f\u2026r\u2026e\u2026e",
    "f\nr\ne\ne", "f\tr\te\te", "f  r  e  e", "f\u1680r\u1680e\u1680e", "f - r - e - e", "f, r, e, e",
    "f\uff65r\uff65e\uff65e", "f\u3000r\u3000e\u3000e",
])
def test_letters_apart_by_any_separator_are_joined_and_flagged(text: str) -> None:
    assert prepare(text) == ("free", ("spaced_letters",))


@pytest.mark.parametrize(("text", "expected"), [
    ("f. r. e. e.", ("free.", ("spaced_letters",))),
    ("f  r  e  e    m  o  n  e  y", ("free money", ("spaced_letters",))),
    ("f.r-e e", ("free", ("spaced_letters",))),  # separators a run may mix
    ("J. R. R. Tolkien", ("jrr. tolkien", ())),  # initials
    ("pick a, b, c or x/y/z", ("pick abc or xyz", ())),  # a list of letters in order is no word
    ("options a, b, or c", ("options a, b, or c", ())),
    ("I am a b", ("i am a b", ())),
])
def test_separators_and_lists(text: str, expected: tuple[str, tuple[str, ...]]) -> None:
    assert prepare(text) == expected


@pytest.mark.parametrize(("text", "plain", "flags"), [
    ("\u0192ree", "free", ("styled_letters",)), ("\u0271oney", "money", ("styled_letters",)),
    ("\u0282ex", "sex", ("styled_letters",)), ("\u01a5orn", "porn", ("styled_letters",)),
    ("\u028biagra", "viagra", ("styled_letters",)), ("\u01adits \u0288ime", "tits time", ("styled_letters",)),
    ("\u0180\u0188\u0257\u0260\u0266\u0199\u026b\u0272\u02a0\u024d\u2c73\u01b4\u0225",
     "bcdghklnqrwyz", ()),  # no plain letter in the word
    ("\u0111rugs", "drugs", ()), ("\u0127ot", "hot", ()), ("\u0167its", "tits", ()), ("\u0253itch", "bitch", ()),
    ("\u24a1\u24ad\u24a0\u24a0", "free", ("styled_letters",)),
    ("\U0001f115\U0001f121\U0001f114\U0001f114", "free", ("styled_letters",)),
])
def test_hooked_and_parenthesised_letters_fold_back(text: str, plain: str, flags: tuple[str, ...]) -> None:
    assert prepare(text) == (plain, flags)


@pytest.mark.parametrize("text", [
    "Đang đi học ở Hà Nội, đến đó rồi đi đâu? Đây là đồ ăn ngon nhất tôi từng thử.",  # Vietnamese
    "Łódź jest piękna, ale dojazd był długi; właściciel był miły i pomocny.",  # Polish
    "Đakovo je lijep grad, a đački dom je odmah uz crkvu. Hvala na pomoći!",  # Croatian
    "Ħafna grazzi għall-għajnuna tiegħek, il-ħanut kien tajjeb ħafna.",  # Maltese
    "Smørrebrød og øl på Ærø, det var en dejlig dag ved søen.",  # Danish
    "Na gode da taimakon ku, ƙasar Najeriya tana da kyau, ɗan uwa ya ɓata lokaci.",  # Hausa
    "Mawu ƒe nya ɖe ŋu, eye wòʋu ʋɔtru la.",  # Ewe
    "Camera at ƒ/2.8, 1/250 s; the function ƒ(x) = x².",
    "I \u2764\ufe0f my dog \U0001f436 and Привет\u2764\ufe0fдруг, 好吃\U0001f60b推荐, Apple\u2122 products",
])
def test_real_text_with_hooked_letters_or_emoji_raises_no_flag(text: str) -> None:
    assert evasion_flags(text) == ()


def test_known_limits_stay_open() -> None:
    """Documented in the module: reversed text, chunks of two letters and regional indicator letters."""
    assert prepare("eerf yenom") == ("eerf yenom", ())
    assert prepare("fr ee mo ney") == ("fr ee mo ney", ())
    assert skeleton("\U0001f1eb\U0001f1f7\U0001f1ea\U0001f1ea") != "free"


def test_accented_spelling_of_a_plain_word_is_the_plain_word_without_a_flag() -> None:
    assert prepare("fréé mönéy") == ("free money", ())
    assert prepare("FRÉÉ") == ("free", ())


@pytest.mark.parametrize("combo", [*itertools.combinations(sorted(TRICKS), 2),
                                   *itertools.combinations(sorted(TRICKS), 3)])
def test_combined_tricks_fold_back_and_are_flagged(combo: tuple[str, ...]) -> None:
    for phrase, seed in itertools.product(PHRASES, SEEDS):
        attacked = obfuscate(phrase, random.Random(seed), combo)
        normalised, flags = prepare(attacked)
        assert normalised == skeleton(phrase), (combo, seed, attacked)
        assert flags, (combo, seed, attacked)
        if "spaced" in combo:
            assert "spaced_letters" in flags
        if "zero_width" in combo and any(ch in attacked for ch in "\u200b\u200c\u200d\u2060\ufeff"):
            assert "invisible_chars" in flags
        if "homoglyphs" in combo and not {"spaced", "separators"} & set(combo) and _has_lookalike(attacked):
            assert "mixed_script" in flags, (combo, seed, attacked)


def _has_lookalike(text: str) -> bool:
    return any(unicodedata.name(ch, "").startswith(("CYRILLIC", "GREEK")) for ch in text)


def test_obfuscation_is_deterministic_and_keeps_the_words_apart() -> None:
    for trick in TRICKS.values():
        assert trick(PHRASES[0], random.Random(3)) == trick(PHRASES[0], random.Random(3))
    assert spaced("free money now", random.Random(1)).count("  ") == 2
    assert skeleton(obfuscate(PHRASES[1], random.Random(5), list(TRICKS))) == skeleton(PHRASES[1])
    with pytest.raises(KeyError):
        obfuscate("x", random.Random(0), ["rot13"])


@pytest.mark.parametrize(("text", "expected"), [
    ("f r e e  m o n e y", ("free money", ("spaced_letters",))),
    ("F.R.E.E cash", ("free cash", ("spaced_letters",))),
    ("k|y|s", ("kys", ("spaced_letters",))),
    ("born in the U.S.A. and proud", ("born in the usa. and proud", ())),
    ("fr\u200bee", ("free", ("invisible_chars",))),
    ("pay me via рау", ("pay me via pay", ("mixed_script",))),  # a Cyrillic word in Latin text
    ("ｆｒｅｅ ｍｏｎｅｙ", ("free money", ("styled_letters",))),
    ("𝐟𝐫𝐞𝐞 𝐦𝐨𝐧𝐞𝐲", ("free money", ("styled_letters",))),
    ("ⓕⓡⓔⓔ", ("free", ("styled_letters",))),
    ("ꜰʀᴇᴇ ᴍᴏɴᴇʏ", ("free money", ("styled_letters",))),
    ("ᶠʳᵉᵉ", ("free", ("styled_letters",))),
    ("z\u0334\u0322a\u0335\u0336lgo", ("zalgo", ("unusual_chars",))),
    ("gift card \ue000", ("gift card \ue000", ("unusual_chars",))),
    ("\u202egnp.exe", ("gnp.exe", ("invisible_chars",))),
    ("ΗΕLLΟ", ("hello", ("mixed_script",))),
])
def test_known_spellings(text: str, expected: tuple[str, tuple[str, ...]]) -> None:
    assert prepare(text) == expected


GENUINE = (
    "This blender is amazing, I use it every morning and it never jams. Five stars, would buy again!",
    "Honestly the worst customer service I've had in years; the refund took 6 weeks (order #A-1234).",
    "Le café était délicieux, mais le serveur a oublié notre commande deux fois. Dommage, à revoir !",
    "Très belle expérience à l'hôtel ; le petit-déjeuner était copieux et le personnel très aimable.",
    "Die Größe passt perfekt, aber die Lieferung hat über zwei Wochen gedauert. Schade, ansonsten gut.",
    "¿Dónde está la estación? El niño comió piñata y jalapeños en la mañana del sábado.",
    "Отличный товар, доставка быстрая, продавцу спасибо! Рекомендую всем, кто ищет хорошие наушники.",
    "Купил iPhone 15 в магазине DNS, всё работает отлично, но чехол пришлось заказывать на Ozon.",
    "Η παράδοση ήταν γρήγορη και το προϊόν είναι εξαιρετικό. Το συνιστώ ανεπιφύλακτα σε όλους!",
    "昨日、新しいUSBケーブルを買いました。とても使いやすくて、値段も安かったです。おすすめ！",
    "東京タワーに行ってきました。ｉＰｈｏｎｅで写真をたくさん撮りました。",
    "这个产品质量很好，物流也很快，我用iPhone拍了几张照片，五星好评！",
    "배송이 빨라서 좋았어요. 아이폰 케이스 품질도 괜찮고 더 잘 할 수 있을 것 같아요.",
    "منتج رائع جدا، التوصيل كان سريعا \u200fوالسعر مناسب. أنصح به بشدة",
    "המוצר הגיע מהר, \u200fאיכות מעולה, ממליץ בחום! iPhone",
    "मुझे यह उत्पाद बहुत पसंद आया, डिलीवरी भी समय पर हुई। क्\u200dष",
    "สินค้าดีมาก ส่งไวมาก ซื้อiPhoneที่ร้านนี้ประทับใจ\u200bมาก",
    "Sản phẩm rất tốt, giao hàng nhanh, tôi sẽ mua lại lần sau.",
    unicodedata.normalize("NFD", "Le café était délicieux, mais le serveur a oublié notre commande, à revoir."),
    "Çok güzel bir ürün, kargo hızlıydı. Teşekkürler! Zażółć gęślą jaźń. Smørrebrød på Ærø.",
    "می\u200cخواهم این محصول را دوباره بخرم، کیفیت عالی بود.",
    "Best day ever 😂😂🔥🔥 👨\u200d👩\u200d👧 ❤️\u200d🔥 🏳️\u200d🌈 👩🏽\u200d💻 1️⃣ #️⃣ 🇺🇸🇫🇷 "
    "🏴\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f ℹ️ Ⓜ️ ✌🏾 🫶",
    "def f(x: int) -> int:\n    return x * 2  # see https://example.com/a/b?q=1&r=2",
    "for (int i = 0; i < n; i++) { a[i] = b[i] * c; }  SELECT * FROM t WHERE a_b = 'x-y';",
    "git commit -m 'fix: e.g. the i.e. case' && ls -la /usr/bin | grep py3",
    "Dose: 5 µg twice daily; resistor 10 kΩ; 1ˢᵗ place, 2ⁿᵈ round; 20 °C, m², H₂O, ½ cup, ﬁne print.",
    "He was born in the U.S.A., a.k.a. the land of the free; R.I.P. old friend.",
    "",
    "\ufeffA file that starts with a byte order mark.",
)


@pytest.mark.parametrize("text", GENUINE)
def test_genuine_text_in_many_languages_raises_no_flag(text: str) -> None:
    assert evasion_flags(text) == ()


def test_no_golden_text_is_flagged() -> None:
    texts = [item.text for path in sorted(POLICIES.glob("*.golden.jsonl")) for item in load_dataset(path).items]
    assert len(texts) > 500
    flagged = [(text, evasion_flags(text)) for text in texts if evasion_flags(text)]
    assert flagged == []


def test_scripts_keep_their_letters() -> None:
    """Only Latin, Greek and Cyrillic lose their accents; Hangul, kana and Devanagari keep form."""
    for text in ("배송이 빨라서 좋았어요", "がぎぐげご パピプペポ", "हिन्दी", "ไทย"):
        assert skeleton(text) == unicodedata.normalize("NFKC", text).casefold()


@pytest.mark.parametrize("text", [
    "a\ud800b\udfff",
    "\ud83d",
    "\u200b" * 1000,
    "\u202e\u2066\u2069\u200f" * 10,
    "\x00\x01\x1b[31m\x7f\t\r\n",
    "\U000e0001\U000e0041\U000e007f",
    "🏴\U000e0067" * 20,
    "\ufe0f\U000e0100\u0301",
    "\u0301" * 500,
    "a" + "\u0308" * 10_000,
    "f r e e " * 10_000,
    "a.b.c." * 10_000 + "d",
    "".join(chr(cp) for cp in range(0x10FFFF // 997 * 997, 0x110000)),
])
def test_hostile_input_never_raises(text: str) -> None:
    normalised, flags = prepare(text)
    assert isinstance(normalised, str)
    assert set(flags) <= set(FLAGS)


_TRICKY = st.sampled_from(["\ud800", "\udfff", "\u200b", "\u200d", "\ufe0f", "\u202e", "\u0301", "\u0308", "\ue000",
                           "\U000e0041", "\U0001f3f4", "\u3164", "а", "ο", "𝐟", "ｆ", " ", ".", "a", "\x00"])


@settings(max_examples=400, deadline=None)
@given(st.text(st.one_of(st.characters(), _TRICKY), max_size=80))
def test_any_text_gives_a_skeleton_and_known_flags(text: str) -> None:
    normalised, flags = prepare(text)
    assert isinstance(normalised, str)
    assert list(flags) == sorted(set(flags)) and set(flags) <= set(FLAGS)
    assert "\u200b" not in normalised and "\u202e" not in normalised


def test_a_megabyte_of_mixed_text_never_raises() -> None:
    rng = random.Random(11)
    text = "".join(chr(rng.randrange(0x110000)) for _ in range(50_000)) + "wire the deposit " * 60_000
    assert len(text) > 1_000_000
    normalised, flags = prepare(text)
    assert "wire the deposit" in normalised
    assert "unusual_chars" in flags


def test_only_invisible_characters_become_nothing() -> None:
    assert prepare("\u200b\u200c\u200d\u2060\ufeff\u00ad\u3164\u2800") == ("", ("invisible_chars",))


def test_every_code_point_alone_is_handled_and_leaves_no_invisible_or_accent() -> None:
    """The skeleton never holds a character the tables remove, whatever the input."""
    removed = {ch for ch in map(chr, range(0x110000))
               if unicodedata.category(ch) == "Cf" and ch not in "\u0600\u0601\u0602\u0603\u0604\u0605\u06dd"
               "\u070f\u0890\u0891\u08e2\U000110bd\U000110cd"}
    removed |= {chr(cp) for cp in range(0x0300, 0x0370)} | {"\u034f", "\ufe0f", "\u3164", "\u2800"}
    for cp in itertools.chain(range(0x30000), range(0xE0000, 0xE0200)):
        normalised, flags = prepare(f"a{chr(cp)}b")
        assert not removed & set(normalised), hex(cp)
        assert set(flags) <= set(FLAGS)


def test_skeleton_is_stable() -> None:
    samples = [*GENUINE, *(obfuscate(p, random.Random(s), list(TRICKS)) for p in PHRASES for s in SEEDS)]
    for text in samples:
        once = skeleton(text)
        assert skeleton(once) == once, repr(text)


def test_tricks_leave_text_readable() -> None:
    """Every trick only adds or swaps characters that render as the original letters."""
    rng = random.Random(2)
    phrase = PHRASES[0]
    assert zero_width(phrase, rng).translate(dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"))) == phrase
    assert len(homoglyphs(phrase, rng, share=1.0)) == len(phrase)
    assert unicodedata.normalize("NFKC", styled(phrase, rng)) == phrase
    assert "".join(ch for ch in unicodedata.normalize("NFD", diacritics(phrase, rng))
                   if not unicodedata.combining(ch)) == phrase
    assert len(leet(phrase, rng)) == len(phrase) == len(hooks(phrase, rng))
    assert "".join(ch for ch in symbols(phrase, rng) if ch.isascii()) == phrase
    assert " ".join("".join(ch for ch in w if ch.isalpha()) for w in separators(phrase, rng).split("   ")) == phrase


def test_separators_and_spacing_go_first() -> None:
    rng = random.Random(4)
    attacked = obfuscate(PHRASES[0], rng, ["leet", "separators", "symbols"])
    assert prepare(attacked)[0] == skeleton(PHRASES[0])
    assert "spaced_letters" in prepare(attacked)[1]
