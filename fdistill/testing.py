"""Tiny in-process models, tokenizer and data (no downloads) for tests, benchmarks and quick demos.

Every factory takes a ``seed`` and draws in a :func:`fdistill.lm.sampling.seeded` block: the same
seed gives the same weights and samples, and the caller's RNG state is untouched.
"""

from __future__ import annotations

import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

from fdistill.lm.cross_tokenizer import byte_level_decoder
from fdistill.lm.sampling import sample_completions
from fdistill.torch_utils import model_devices, seeded

WORDS = "the a cat dog sat ran on under mat log big small red blue and then it was very happy sad".split()
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


def tokenizer() -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    # a minimal chat template: turns joined by spaces, <s> opens the assistant's reply
    fast.chat_template = (
        "{% for m in messages %}{{ m['content'] }} {% endfor %}{% if add_generation_prompt %}<s>{% endif %}"
    )
    return fast


VOCAB = len(SPECIALS) + len(WORDS)


def llama(layers: int, seed: int, hidden: int = 32, init: float = 0.02, tokenizer=None) -> LlamaForCausalLM:
    """A tiny Llama over :func:`tokenizer`'s vocabulary, or over ``tokenizer``'s (e.g. one of
    :func:`cross_tokenizers`: its size and special ids)."""
    special = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    if tokenizer is not None:
        special = {name: getattr(tokenizer, name) for name in special}
    cfg = LlamaConfig(
        vocab_size=VOCAB if tokenizer is None else len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        initializer_range=init,
        tie_word_embeddings=False,
        **special,
    )
    with seeded(seed):
        return LlamaForCausalLM(cfg)


def bart(layers: int, seed: int, d_model: int = 32, init: float = 0.02) -> BartForConditionalGeneration:
    cfg = BartConfig(
        vocab_size=VOCAB,
        d_model=d_model,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=2 * d_model,
        decoder_ffn_dim=2 * d_model,
        max_position_embeddings=128,
        init_std=init,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=2,
        forced_bos_token_id=None,
        forced_eos_token_id=None,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
    )
    with seeded(seed):
        return BartForConditionalGeneration(cfg)


def t5(layers: int, seed: int, d_model: int = 32, init: float = 1.0) -> T5ForConditionalGeneration:
    cfg = T5Config(
        vocab_size=VOCAB,
        d_model=d_model,
        d_kv=8,
        d_ff=2 * d_model,
        num_layers=layers,
        num_decoder_layers=layers,
        num_heads=4,
        initializer_factor=init,
        pad_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=0,
        dropout_rate=0.0,
    )
    with seeded(seed):
        return T5ForConditionalGeneration(cfg)


def gpt2(layers: int, seed: int, hidden: int = 32, init: float = 0.02) -> GPT2LMHeadModel:
    cfg = GPT2Config(
        vocab_size=VOCAB,
        n_embd=hidden,
        n_layer=layers,
        n_head=4,
        n_positions=128,
        initializer_range=init,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    with seeded(seed):
        return GPT2LMHeadModel(cfg)


def prompts(n: int, seed: int = 0) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    return [
        " ".join(
            WORDS[i] for i in torch.randint(0, len(WORDS), (int(torch.randint(2, 5, (1,), generator=g)),), generator=g)
        )
        for _ in range(n)
    ]


def dataset(n: int = 16, seed: int = 0, teacher=None, tok=None, max_new_tokens: int = 8) -> Dataset:
    """Prompts, references and (if a teacher is given) teacher samples as token ids."""
    ps = prompts(n, seed)
    refs = [" ".join(reversed(p.split())) for p in ps]
    data = {"prompt": ps, "reference": refs}
    if teacher is not None:
        data["teacher_sample_ids"] = sample_ids(teacher, tok, ps, max_new_tokens, seed)
    return Dataset.from_dict(data)


@torch.no_grad()
def sample_ids(model, tok, ps: list[str], max_new_tokens: int, seed: int) -> list[list[int]]:
    """Ancestral samples (EOS kept, nothing after it) — what offline teacher sampling stores."""
    from transformers import GenerationConfig

    from fdistill.lm.data import DistillCollator

    collator = DistillCollator(tok, is_encoder_decoder=model.config.is_encoder_decoder)
    batch = collator([{"prompt": p} for p in ps])
    config = GenerationConfig(
        do_sample=True,
        top_k=0,
        max_new_tokens=max_new_tokens,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    with seeded(seed, devices=model_devices(model)):
        comp, mask = sample_completions(model, batch["prompt_ids"], batch["prompt_mask"], config)
    return [row[m].tolist() for row, m in zip(comp, mask)]


def config(output_dir, **overrides):
    """A tiny CPU `FDistillConfig` for tests and examples: silent, seeded, no checkpoints, a log every step, 6-token
    student samples; ``overrides`` replace any of these or set any other field."""
    from fdistill.lm.config import FDistillConfig

    defaults = dict(
        output_dir=str(output_dir),
        max_new_tokens=6,
        per_device_train_batch_size=4,
        learning_rate=3e-3,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        logging_steps=1,
        seed=0,
    )
    return FDistillConfig(**{**defaults, **overrides})


# ---- Two tiny tokenizers over one alphabet, for cross-tokenizer tests ------------------------------------------------
# fdistill.lm.cross_tokenizer aligns two tokenizations of one text; these are small enough to enumerate every string.


def byte_level_bpe(
    vocab: list[str | bytes],
    merges: list[tuple[str | bytes, str | bytes]],
    *,
    eos: str,
    pad: str,
    all_bytes: bool = False,
) -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE tokenizer (no regex pre-split, no prefix space) from a plain-text vocabulary.

    ``vocab`` lists the tokens in id order as the text (or bytes, e.g. half a UTF-8 character) they stand for
    (``" a"``, not ``"Ġa"``); ``eos`` and ``pad`` name the special tokens among them (one name when pad is EOS).
    ``merges`` are pairs of plain-text pieces, applied in order. With ``all_bytes`` the single-byte tokens not yet in
    ``vocab`` are appended (in byte order), so any text encodes.
    """
    from tokenizers import decoders

    to_char = {b: c for c, b in byte_level_decoder().items()}  # GPT-2's byte → printable character table

    def enc(text: str | bytes) -> str:
        return "".join(to_char[b] for b in (text if isinstance(text, bytes) else text.encode("utf-8")))

    pieces = [t if t in (eos, pad) else enc(t) for t in vocab]
    if all_bytes:
        pieces += [c for c in (to_char[b] for b in range(256)) if c not in pieces]
    model = models.BPE({t: i for i, t in enumerate(pieces)}, [(enc(x), enc(y)) for x, y in merges])
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=pad)


def sentencepiece_bpe(
    vocab: list[str], merges: list[tuple[str, str]], *, eos: str, pad: str, byte_fallback: bool = False
) -> PreTrainedTokenizerFast:
    """A Gemma-style SentencePiece BPE tokenizer (spaces normalised to '▁', no dummy prefix) from a plain-text vocabulary.

    Arguments as :func:`byte_level_bpe`; with ``byte_fallback`` the 256 tokens ``<0x00>``…``<0xFF>`` are appended and
    any character outside ``vocab`` is spelled in them (its UTF-8 bytes), as Gemma's tokenizer does.
    """
    from tokenizers import decoders, normalizers

    def enc(text: str) -> str:
        return text.replace(" ", "▁")

    pieces = [t if t in (eos, pad) else enc(t) for t in vocab]
    if byte_fallback:
        pieces += [f"<0x{b:02X}>" for b in range(256)]
    model = models.BPE(
        {t: i for i, t in enumerate(pieces)}, [(enc(x), enc(y)) for x, y in merges], byte_fallback=byte_fallback
    )
    tok = Tokenizer(model)
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=pad)


CROSS_ALPHABET = "ab "  # the one alphabet both cross tokenizers spell every string in


def cross_tokenizers() -> tuple[PreTrainedTokenizerFast, PreTrainedTokenizerFast]:
    """Two deterministic tokenizers of the strings over ``{a, b, space}`` that cut them differently: ``(tok_a, tok_b)``.

    ``tok_a``, byte-level BPE (GPT-2 style), 7 ids::

        0 <pad>   1 </s>   2 "a"   3 "b"   4 " "   5 "ab"   6 " b"        merges: a+b, ' '+b

    ``tok_b``, SentencePiece BPE (Gemma style, '▁' for space), 8 ids, specials last::

        0 " "   1 "a"   2 "b"   3 "ba"   4 "bb"   5 " a"   6 <eos>   7 <pad>    merges: b+a, b+b, ' '+a

    E.g. "abba a" is ``ab|b|a|' '|a`` → ``[5, 3, 2, 4, 2]`` under tok_a and ``a|b|ba|' a'`` → ``[1, 2, 3, 5]`` under
    tok_b (merges apply in the order listed: "bba" → ``b|ba``). Both decode every string over the alphabet back to
    itself; neither adds BOS; EOS ends a completion.
    """
    tok_a = byte_level_bpe(
        ["<pad>", "</s>", "a", "b", " ", "ab", " b"], [("a", "b"), (" ", "b")], eos="</s>", pad="<pad>"
    )
    tok_b = sentencepiece_bpe(
        [" ", "a", "b", "ba", "bb", " a", "<eos>", "<pad>"],
        [("b", "a"), ("b", "b"), (" ", "a")],
        eos="<eos>",
        pad="<pad>",
    )
    return tok_a, tok_b
