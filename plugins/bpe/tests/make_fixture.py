"""Writes tests/fixtures/smollm2-ids.json: SmolLM2's ids for mixed texts, from
Hugging Face `tokenizers` itself, for the outpost-bpe tests to match.

    target/py/bin/python plugins/bpe/tests/make_fixture.py \
        [--tokenizer target/models/smollm2/tokenizer.json]

The tokenizer.json is the one host/pipelines/smollm2/convert.py writes; its
sha256 and the `tokenizers` version go into the fixture, so a test failure
after either changes says which.
"""

import argparse
import hashlib
import json
from pathlib import Path

import tokenizers
from tokenizers import Tokenizer

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]

TEXTS = [
    "",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "What is 2024 + 17?",
    "12345 3.14 -0.5e10 1,000,000",
    "Version v2.0.1 released on 2024-11-27 at 10:30",
    "Café crème brûlée, naïve façade, jalapeño",
    "東京の天気は晴れです。明日は雨かもしれません。",
    "北京欢迎你！这是一个测试。",
    "안녕하세요 세계",
    "Emoji: 😀 👍🏽 🚂🚃",
    "Family: 👨‍👩‍👧‍👦 and a rainbow flag 🏳️‍🌈",
    "Flags: 🇫🇷 🇯🇵 🇺🇸",
    'fn main() { println!("hi"); }',
    "def f(x):\n    return x ** 2  # square\n",
    "if (a && b || !c) { x += 1; } else { y -= 2; }",
    "multiple   spaces    here",
    "tabs\tand\t\ttabs",
    "line one\nline two\n\nline four\r\nCRLF",
    "   leading spaces",
    "trailing spaces   ",
    "  \n\t  mixed whitespace \t\n ",
    " ",
    "\n\n\n",
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more text<|im_end|><|im_start|>",
    "<|im_start|<|im_end|>> almost special <|im_sta",
    "مرحبا بالعالم، كيف حالك؟",
    "नमस्ते दुनिया, क्षत्रिय हिन्दी",
    "Привет, мир! Как дела?",
    "Γειά σου Κόσμε",
    "שלום עולם",
    "Wait... what?!?! (really) -- yes; ok: [done] {x} <y> @z #tag $5 %6 ^7 &8 *9",
    "!!!???...,,,;;;:::---___===+++",
    "it's, I'm, we'll, they've, she'd, you're, don't, IT'S, ''s",
    "x² + y³ = z½, Ⅻ o'clock, ٣ and १",
    "zero\u200bwidth\u200djoiner\ufeffbom",
    "control\x00\x01\x07\x1b[31mred\x1b[0m",
    "soft\u00a0hyphen\u00adand\u3000ideographic space\u2028line sep",
    "e\u0301 vs \u00e9, combining ring a\u030a",
    "https://example.com/path?q=1&r=two#frag user@example.org",
    "ÀÁÂÃÄÅ ÆÇ ÐÑ Øß þÿ",
    # SmolLM2's vocabulary has no token for the bytes 04, 06, 13, 14, 16, 1D
    # (control characters) or F1 and F2 (lead bytes of U+40000..U+BFFFF):
    # `tokenizers` drops them, so these do not round-trip.
    "dropped\x04\x06\x13 bytes, plane 4 \U00040000 and 10 \U000A0000",
    "a" * 300,
    "🙂" * 20,
]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", type=Path, default=ROOT / "target/models/smollm2/tokenizer.json")
    parser.add_argument("--out", type=Path, default=HERE / "fixtures/smollm2-ids.json")
    args = parser.parse_args()

    data = args.tokenizer.read_bytes()
    tok = Tokenizer.from_str(data.decode("utf-8"))
    cases = []
    for text in TEXTS:
        ids = tok.encode(text).ids
        cases.append({
            "text": text,
            "ids": ids,
            "decoded": tok.decode(ids, skip_special_tokens=False),
            "decoded_skip_special": tok.decode(ids, skip_special_tokens=True),
        })
    fixture = {
        "source": {
            "tokenizers": tokenizers.__version__,
            "tokenizer_json_sha256": hashlib.sha256(data).hexdigest(),
            "generator": "plugins/bpe/tests/make_fixture.py",
        },
        "cases": cases,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(fixture, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"{args.out}: {len(cases)} cases")


if __name__ == "__main__":
    main()
