"""Integrations with other libraries: Hugging Face transformers (`transformers`), GPT-2 with MSLA/GQA (`gpt2`).

Both need the `hf` extra (`pip install "fastattn[hf]"`); importing this package needs nothing.
"""
