"""Tokenizers, corpora (through `datasets`) and packed batches."""
from .corpus import DataConfig, TextData, load_corpus, stdlib_corpus_file
from .packed import PackedBatches, eval_batches
from .tokenizers import ByteTokenizer, CharTokenizer, tokenizer_from_dict

__all__ = ["ByteTokenizer", "CharTokenizer", "tokenizer_from_dict", "DataConfig", "TextData", "load_corpus",
           "stdlib_corpus_file", "PackedBatches", "eval_batches"]
