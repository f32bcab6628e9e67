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


def llama(layers: int, seed: int, hidden: int = 32, init: float = 0.02) -> LlamaForCausalLM:
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        initializer_range=init,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
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
