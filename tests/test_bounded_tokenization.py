"""Bounded tokenization (issue 16): a long document is tokenized only as far as the official cut, in segments cut at
safe splits, and the kept token ids are exactly the official ones (tokenize the whole text, then cut).

The split rules are checked three ways: against the Unicode database (the characters they rely on are
normalization boundaries and keep their category), against the tokenizer's own regex (what it calls a letter or
whitespace), and end to end (tokens of the whole text == tokens of the two halves at every split of fuzzed texts).
Then every path that tokenizes here is checked for equal ids and bounded work: PromptEncoder (LocalScorer, the
engine) and VLLMScorer's fitting with a local tokenizer.
"""

from __future__ import annotations

import random
import re
import unicodedata

import pytest

from qwen3_rerank_integrations import prompt
from qwen3_rerank_integrations.prompt import (
    DEFAULT_INSTRUCTION,
    PromptEncoder,
    document_part,
    format_body,
    split_after,
    splits_hold_for,
    token_prefixes,
)
from tests.reference import format_instruction, official_input_ids

QUERY = "What is the capital of China?"
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def tokenizer(qwen_tokenizer):
    return qwen_tokenizer


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _splits(text: str) -> list[int]:
    found, position = [], 1
    while (split := split_after(text, position)) < len(text):
        found.append(split)
        position = split + 1
    return found


# ------------------------------------------------------------------------------------------------ the rules
@pytest.fixture(scope="module")
def second_of_a_pair() -> set[int]:
    """Every character that NFC may join to the one before it: the second of a canonical two-character
    decomposition (all planes), and Hangul medial and final jamo (composed algorithmically)."""
    found = {*range(0x1160, 0x1200), *range(0xD7B0, 0xD800)}
    for code in range(0x110000):
        parts = unicodedata.decomposition(chr(code)).split()
        if len(parts) == 2 and not parts[0].startswith("<"):
            found.add(int(parts[1], 16))
    return found


def _members(char_class: str) -> list[str]:
    pattern = re.compile(f"[{char_class}]")
    return [chr(code) for code in range(0x10000) if pattern.fullmatch(chr(code))]


def test_the_characters_after_a_split_are_normalization_boundaries_with_a_stable_category(second_of_a_pair):
    old = unicodedata.ucd_3_2_0
    for char in _members(prompt._SAFE_NEXT):
        code = ord(char)
        assert unicodedata.combining(char) == 0 and old.combining(char) == 0, hex(code)
        assert unicodedata.category(char) == old.category(char), hex(code)
        assert code not in second_of_a_pair, hex(code)
        if 0xAC00 <= code <= 0xD7A3:  # a Hangul syllable decomposes to jamo starting with a leading consonant
            assert 0x1100 <= ord(unicodedata.normalize("NFD", char)[0]) <= 0x1112
        else:
            assert not unicodedata.decomposition(char) or unicodedata.decomposition(char).startswith("<"), hex(code)
    assert set(_members(prompt._SAFE_NEXT_NOT_LETTER)) <= set(_members(prompt._SAFE_NEXT))
    assert set(_members(prompt._SAFE_NEXT_NOT_SPACE)) <= set(_members(prompt._SAFE_NEXT))
    assert not any(unicodedata.category(c)[0] == "L" for c in _members(prompt._SAFE_NEXT_NOT_LETTER))
    assert not any(c.isspace() for c in _members(prompt._SAFE_NEXT_NOT_SPACE))
    # NFC may join a safe character to marks after it: the result keeps its class (not a letter, not a space)
    composites = {}
    for code in range(0x110000):
        parts = unicodedata.decomposition(chr(code)).split()
        if len(parts) == 2 and not parts[0].startswith("<"):
            composites.setdefault(chr(int(parts[0], 16)), []).append(chr(code))
    for char in _members(prompt._SAFE_NEXT_NOT_LETTER):
        for composite in composites.get(char, []):
            assert unicodedata.category(composite)[0] not in "LN" and not composite.isspace(), hex(ord(composite))
    for char in "0123456789 \t":
        assert char not in composites


def test_the_letters_before_a_split_are_left_alone_by_nfc(second_of_a_pair):
    letters = _members(prompt._letter_class())
    assert len(letters) > 40000 and "a" in letters and "中" in letters and "가" in letters and "я" in letters
    for char in letters:
        assert unicodedata.normalize("NFC", char) == char and ord(char) not in second_of_a_pair, hex(ord(char))
    assert "\u0958" not in letters  # DEVANAGARI QA: NFC makes it KA + NUKTA, a mark


def test_the_tokenizers_regex_agrees_on_letters_and_whitespace(tokenizer):
    split = tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str

    def pieces(text: str) -> list[str]:
        return [piece for piece, _ in split(text)]

    # a letter here is a letter there: "<letter>." is two pieces (a punctuation character would join the dot)
    for char in _members(prompt._letter_class()):
        assert len(pieces(char + ".")) == 2, hex(ord(char))
    # whatever is not whitespace here is not whitespace there: "c c a" is [cc][a] (punctuation), [c][c][a] (digits)
    # or [cca] (letters), never whitespace's [c][ca]
    space = re.compile(f"[{prompt._SPACE}]")
    checked = 0
    for code in range(0x10000):
        char = chr(code)
        if space.fullmatch(char) or 0xD800 <= code <= 0xDFFF:
            continue
        found = pieces(char * 2 + "a")
        assert not (len(found) == 2 and found[1] != "a"), hex(code)
        checked += 1
    assert checked > 60000 and pieces("\u3000\u3000a")[1] != "a"  # the probe does tell whitespace apart


_PIECES = [
    "a", "Z", "word", "Beijing", " ", "  ", "\t", "\n", "\r\n", "\n\n", "   \n", " \t ", "1", "42", "3.14", ".", ",",
    "!", "?", "'s", "'t", "'re", "'S", "don't", "(", ")", "<", "=", ">", "\u0338", "e\u0301", "\u0301",
    "\u0323\u0302", "a\u0316\u0301", "中", "文", "，", "。", "「", "」", "１", "Ａ", "ｂ", "가", "\u1100", "\u1161",
    "\u11a8", "क", "\u0958", "\u093c", "ि", "é", "ñ", "ß", "Ω", "\u2126", "\u037e", "\u00a0", "\u2003", "\u3000",
    "\u200b", "\u180e", "\x1c", "🇨🇳", "👩\u200d👩\u200d👧", "𠀀", "ſ", "\u212a", "ﬁ", "…", "—", "“", "”", "‘", "’",
    "\u0e01", "\u0e34", "ا", "\u064b", "x" * 40, " " * 25, "9" * 12, "-" * 30, "=" * 9, "\u3099", "か", "\u309a",
    "<\u200b|im_end|>", "\u00b7", "\u0387",
]


def test_at_every_split_the_tokens_are_the_tokens_of_the_two_halves(tokenizer):
    rng = random.Random(16)
    texts = ["Hello world, this is a test. 北京是首都。 123abc   spaces\n\nnew line don't" * 3]
    texts += ["".join(rng.choice(_PIECES) for _ in range(rng.randint(5, 80))) for _ in range(400)]
    checked = 0
    for text in texts:
        splits = _splits(text)
        if not splits:
            continue
        halves = tokenizer([text] + [text[:i] for i in splits] + [text[i:] for i in splits],
                           add_special_tokens=False)["input_ids"]
        whole, heads, tails = halves[0], halves[1 : len(splits) + 1], halves[len(splits) + 1 :]
        for i, head, tail in zip(splits, heads, tails):
            assert list(head) + list(tail) == list(whole), (text, i)
        checked += len(splits)
    assert checked > 5000


def test_splits_are_found_in_prose_code_and_cjk_but_not_inside_a_run():
    assert len(_splits("The quick brown fox jumps over the lazy dog. " * 10)) >= 90
    assert len(_splits("for (int i = 0; i < n; ++i) { total += x[i]; }\n" * 5)) > 50
    assert len(_splits("北京是中华人民共和国的首都，也是全国的政治中心。" * 5)) >= 10
    assert _splits("x" * 1000) == [] and _splits(" " * 1000) == []


def test_only_qwens_tokenizer_is_split(tokenizer, minilm_dir):
    from transformers import AutoTokenizer

    assert splits_hold_for(tokenizer)
    assert not splits_hold_for(AutoTokenizer.from_pretrained(minilm_dir))  # WordPiece: tokenized whole
    assert not splits_hold_for(object())


# ------------------------------------------------------------------------------------------------ PromptEncoder
class _Spy:
    """A tokenizer that records the length of every text it is asked to tokenize."""

    def __init__(self, tokenizer):
        self._tokenizer, self.lengths = tokenizer, []

    def __call__(self, texts, **kwargs):
        self.lengths += [len(t) for t in ([texts] if isinstance(texts, str) else texts)]
        return self._tokenizer(texts, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


def _documents_around_the_cut(tokenizer, limit: int) -> list[str]:
    """Documents whose body is just below, at and just above ``limit`` tokens, in English, CJK, whitespace runs,
    digits and emoji, plus long ones."""
    base = format_body(QUERY, "", DEFAULT_INSTRUCTION)
    fillers = ["The capital of China is Beijing. ", "北京是中华人民共和国的首都。", "word    \n\n  ", "1234567890 ",
               "🇨🇳👩\u200d👩\u200d👧 𠀀", "e\u0301\u0323 ", "x" * 300 + " "]
    documents = []
    for filler in fillers:
        text = ""
        while len(_ids(tokenizer, base + text)) < limit + 2:
            text += filler
        for size in range(len(text), 0, -1):  # the longest prefix of each token count around the limit
            count = len(_ids(tokenizer, base + text[:size]))
            if count in (limit - 1, limit, limit + 1) and text[:size] not in documents:
                documents.append(text[:size])
            if count < limit - 1:
                break
        documents.append(filler * (4 * limit))
    return documents


@pytest.mark.parametrize("max_length", [100, 300])
def test_encoded_ids_equal_the_official_ones_below_at_and_above_the_cut(tokenizer, monkeypatch, max_length):
    monkeypatch.setattr(prompt, "WHOLE_CHARS_PER_TOKEN", 0)  # every body in segments, even the short ones
    monkeypatch.setattr(prompt, "_GUESS_CHARS_PER_TOKEN", 1)  # and in many of them
    encoder = PromptEncoder(tokenizer, max_length)
    assert encoder.bounded
    documents = _documents_around_the_cut(tokenizer, encoder.max_body_tokens)
    tokens = encoder.encode(QUERY, documents, DEFAULT_INSTRUCTION)
    pairs = [format_instruction(None, QUERY, doc) for doc in documents]
    assert tokens.ids == official_input_ids(tokenizer, pairs, max_length)
    whole = [_ids(tokenizer, pair) for pair in pairs]
    assert tokens.truncated == [len(ids) > encoder.max_body_tokens for ids in whole]
    assert {len(ids) - encoder.max_body_tokens for ids in whole} >= {-1, 0, 1}  # the cases the test is about


def test_a_2_mb_document_is_never_tokenized_whole(tokenizer):
    """The regression guard for memory and time: the tokenizer sees about max_length tokens' worth of text, not
    the document (before: one 2 MB string; 20 MB took 17 s and +2.8 GiB)."""
    spy = _Spy(tokenizer)
    encoder = PromptEncoder(spy, 512)
    rng = random.Random(8)
    words = ["Beijing", "capital", "北京", "首都。", "2024", "don't", "🇨🇳", "\n\n", "    ", "é"]
    huge = " ".join(rng.choice(words) for _ in range(450_000))
    assert len(huge) > 2_000_000
    spy.lengths.clear()
    tokens = encoder.encode(QUERY, [huge, "short"], DEFAULT_INSTRUCTION)
    assert max(spy.lengths) <= 512 * prompt.WHOLE_CHARS_PER_TOKEN
    assert sum(spy.lengths) <= 3 * 512 * prompt._GUESS_CHARS_PER_TOKEN
    official = official_input_ids(tokenizer, [format_instruction(None, QUERY, huge[:20_000])], 512)[0]
    assert tokens.ids[0] == official and tokens.truncated == [True, False]


def test_a_run_without_splits_is_tokenized_to_its_end_and_still_exact(tokenizer):
    document = "intro " + "x" * 20_000 + " tail"
    encoder = PromptEncoder(tokenizer, 128)
    tokens = encoder.encode(QUERY, [document], DEFAULT_INSTRUCTION)
    assert tokens.ids == official_input_ids(tokenizer, [format_instruction(None, QUERY, document)], 128)


def test_token_prefixes_batches_short_texts_whole_and_long_ones_in_segments():
    steps = token_prefixes(["short", "a b " * 1000], 10)
    first = next(steps)
    assert first[0] == "short" and len(first[1]) < 200
    with pytest.raises(StopIteration) as done:
        steps.send([[1], list(range(20))])
    assert done.value.value == [[1], list(range(20))]
    whole = token_prefixes(["a b " * 1000], 10, segmented=False)
    assert next(whole) == ["a b " * 1000]


# ------------------------------------------------------------------------------------------------ the scorers
def test_local_scorer_scores_a_long_document_like_the_official_method(tiny_model_dir, reference_model, tokenizer):
    from qwen3_rerank_integrations import LocalScorer
    from tests.reference import reference_scores

    rng = random.Random(3)
    documents = [" ".join(rng.choice(["Beijing", "北京", "capital", "1949", "\n", "   "]) for _ in range(60_000)),
                 "北京是中华人民共和国的首都。" * 3000]
    scorer = LocalScorer(str(tiny_model_dir), device="cpu", dtype="float32", max_length=200)
    spy = _Spy(scorer.load()._encoder.tokenizer)
    scorer._encoder.tokenizer = spy
    scores = scorer.score(QUERY, documents)
    expected = reference_scores(*reference_model, QUERY, documents, max_length=200)
    assert max(abs(a - b) for a, b in zip(scores, expected)) <= TOLERANCE
    assert max(spy.lengths) <= 200 * prompt.WHOLE_CHARS_PER_TOKEN


def test_vllm_fitting_with_a_local_tokenizer_cuts_a_huge_document_officially_tokenizing_little(tokenizer):
    from qwen3_rerank_integrations.vllm.fitting import FitCache, Fitting

    spy = _Spy(tokenizer)

    class Settings:
        model, max_length, tokenizer, base_urls = None, 256, spy, ["http://unused"]

    huge = "Beijing is the capital of China, a city of 21 million people. " * 40_000
    plan = Fitting(Settings(), FitCache()).fit_plan(QUERY, [huge, "short"], DEFAULT_INSTRUCTION, Settings.max_length)
    with pytest.raises(StopIteration) as done:  # a local tokenizer and max_length: no request at all
        next(plan)
    fitted = done.value.value
    assert fitted[1] == "short" and len(fitted[0]) < 2000
    prefix_n = len(_ids(tokenizer, prompt.PREFIX))
    body = _ids(tokenizer, format_body(QUERY, fitted[0], DEFAULT_INSTRUCTION))
    official = official_input_ids(tokenizer, [format_instruction(None, QUERY, huge[:50_000])], 256)[0]
    assert official[prefix_n : prefix_n + len(body)] == body  # the cut text re-tokenizes to the official ids
    assert max(spy.lengths) <= 256 * prompt.WHOLE_CHARS_PER_TOKEN
    assert len(document_part(fitted[0])) < len(huge)
