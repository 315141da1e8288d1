"""Tiny random models for tests: built in a folder in well under a second, no downloads."""

from __future__ import annotations

from pathlib import Path

__all__ = ["CORPUS", "build_tiny_encoder", "build_tiny_gpt2"]

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a cat sat on the mat and looked at the dog",
    "what is the capital of france? paris is the capital of france.",
    "hello world, this is a tiny model for tests.",
    "numbers 0123456789 and punctuation ,.;:!?'\"()[]{}",
]


def _tokenizer(vocab_size: int) -> object:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        pad_token="<pad>",
    )


def build_tiny_gpt2(path: str | Path, *, seed: int = 0, n_positions: int = 128) -> Path:
    """A 2-layer random GPT-2 (about 170k parameters) with a byte-level BPE tokenizer."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    path = Path(path)
    torch.manual_seed(seed)
    tokenizer = _tokenizer(400)
    config = GPT2Config(
        n_layer=2,
        n_head=2,
        n_embd=64,
        vocab_size=len(tokenizer),  # type: ignore[arg-type]
        n_positions=n_positions,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=1,
    )
    model = GPT2LMHeadModel(config).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)  # type: ignore[attr-defined]
    return path


def build_tiny_encoder(path: str | Path, *, seed: int = 0) -> Path:
    """A 2-layer random BERT encoder with a byte-level BPE tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    path = Path(path)
    torch.manual_seed(seed)
    tokenizer = _tokenizer(300)
    config = BertConfig(
        num_hidden_layers=2,
        num_attention_heads=2,
        hidden_size=32,
        intermediate_size=64,
        vocab_size=len(tokenizer),  # type: ignore[arg-type]
        max_position_embeddings=64,
        pad_token_id=1,
    )
    model = BertModel(config, add_pooling_layer=False).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)  # type: ignore[attr-defined]
    return path
