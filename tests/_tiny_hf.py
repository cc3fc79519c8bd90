"""Tiny random-weight transformers folders for tests (no downloads)."""

import json


def write_clip_tokenizer_files(folder):
    """Byte-level BPE with no merges: every character is its own token, enough to tokenize test prompts."""
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789.,!")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in chars:
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return len(vocab)
