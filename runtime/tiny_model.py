"""A tiny random Llama with a locally trained tokenizer: a real model vLLM loads, made offline.

For tests, demos (`harness`) and the CPU checks; nothing is downloaded. Hidden 256,
2 layers, 4 attention heads, 2 KV heads (grouped-query attention, as real models have).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Grace Blackwell boxes serve language models with unified memory.",
    "A batch of requests is split into chunks and checkpointed after each chunk.",
    "Sticky sessions keep the prefix cache warm on one backend.",
    "Embeddings are reduced with UMAP and clustered with HDBSCAN.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20",
] * 20

SHAPE = {"hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}


def make_tiny_llama(path: Path, *, vocab_size: int = 512, max_position_embeddings: int = 2048, seed: int = 0) -> Path:
    """Write config.json, model.safetensors and tokenizer files to `path`; returns `path`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    fast.save_pretrained(path)

    torch.manual_seed(seed)
    values: dict[str, Any] = {
        "vocab_size": len(fast),
        "intermediate_size": 512,
        "max_position_embeddings": max_position_embeddings,
        "bos_token_id": fast.bos_token_id,
        "eos_token_id": fast.eos_token_id,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",  # written to config.json as vLLM reads it
        **SHAPE,
    }
    config = LlamaConfig(**values)
    model = LlamaForCausalLM(config).to(torch.bfloat16)  # type: ignore[arg-type]  # transformers' stubs
    model.save_pretrained(path, safe_serialization=True)
    config_file = path / "config.json"
    saved = json.loads(config_file.read_text())
    saved.setdefault("torch_dtype", "bfloat16")
    config_file.write_text(json.dumps(saved, indent=2))
    return path


if __name__ == "__main__":
    import sys

    print(make_tiny_llama(Path(sys.argv[1] if len(sys.argv) > 1 else "build/tiny-llama")))
