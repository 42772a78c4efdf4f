"""A character-level ``transformers.PreTrainedTokenizerFast`` built offline (no hub, no training).

Every character of the task alphabet is one token; ``"\\n"`` is one token (id 3), the step boundary
of SPEC 2.1. Built with the ``tokenizers`` library as a byte-level BPE with **no merges**, through
transformers' own ``Qwen2Tokenizer`` class (a ``PreTrainedTokenizerFast``): the model folder says
``model_type: qwen2``, and ``AutoTokenizer`` then always rebuilds a ``Qwen2Tokenizer`` (byte-level
pre-tokenizer) from the saved vocabulary. Building it the same way makes
``AutoTokenizer.from_pretrained(folder)`` give exactly the tokenizer we saved. All 256 bytes are in
the vocabulary, so any text round-trips (ASCII one token per character; other characters one token
per UTF-8 byte).

Special tokens: ``<|endoftext|>`` (0), ``<|im_start|>`` (1), ``<|im_end|>`` (2, eos and pad). The
chat template is ChatML::

    <|im_start|>user\\nCompute 3+4.<|im_end|>\\n<|im_start|>assistant\\n
"""

from __future__ import annotations

import string

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# The task alphabet, newline first: its id is fixed (3) and documented as the boundary token.
CHARS = ("\n", " ") + tuple(string.digits) + tuple("+-*/=().,:;!?'\"$%<>_#&@[]{}|^~`\\") \
    + tuple(string.ascii_lowercase) + tuple(string.ascii_uppercase)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (what the ByteLevel pre-tokenizer emits)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) \
        + list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def char_vocab() -> dict[str, int]:
    """Token -> id: the specials, the task alphabet (ids 3..), then the remaining bytes (259 in all)."""
    b2u = _byte_to_unicode()
    order = [ord(c) for c in CHARS] + [b for b in range(256) if chr(b) not in CHARS]
    if len(set(order)) != 256:
        raise RuntimeError("char tokenizer: duplicate characters in CHARS")
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    vocab.update({b2u[b]: len(SPECIAL_TOKENS) + i for i, b in enumerate(order)})
    return vocab


def build_char_tokenizer():
    """The character tokenizer (``len(tok) == 259``, newline id 3, left padding)."""
    from transformers import Qwen2Tokenizer

    tok = Qwen2Tokenizer(
        vocab=char_vocab(),
        merges=[],
        unk_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        padding_side="left",
        model_max_length=256,
        clean_up_tokenization_spaces=False,
    )
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    tok.chat_template = CHAT_TEMPLATE
    return tok
