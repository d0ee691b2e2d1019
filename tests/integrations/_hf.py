"""Tiny random Llama / Qwen2 / GPT-2 configs shared by the integration tests (built in well under a second)."""
import copy

import torch

transformers = __import__("pytest").importorskip("transformers")  # the hf extra; `make` installs it

VOCAB = 97


def config(name: str, **kw):
    if name == "llama":
        c = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    elif name == "qwen2":  # GQA with one kv head (MQA)
        c = transformers.Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=128)
    elif name == "gpt2":
        c = transformers.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=128,
                                    attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    else:
        raise ValueError(name)
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def pair(name: str, impl: str, ref_impl: str = "sdpa", seed: int = 0, **cfg_kw):
    """(model with `impl`, the same weights with `ref_impl`), both in eval mode."""
    torch.manual_seed(seed)
    cfg = config(name, **cfg_kw)
    # One config object each: from_config records the implementation on the config it is given.
    model = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(cfg), attn_implementation=impl)
    ref = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(cfg), attn_implementation=ref_impl)
    assert model.config._attn_implementation == impl and ref.config._attn_implementation == ref_impl
    ref.load_state_dict(model.state_dict())
    return model.eval(), ref.eval()
