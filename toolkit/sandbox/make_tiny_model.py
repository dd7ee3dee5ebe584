"""Make a tiny, randomly initialised Llama coding model that vLLM (CPU build) can really serve.

It stands in for a real coding model where no GPU and no hub exist (the sandbox workstation, CI):
same architecture family, same files (safetensors, tokenizer, chat template), answers in noise.
Deterministic (fixed seed, fixed corpus), so its files hash the same on every run and can be locked.

Runs with the vLLM venv's Python (needs torch, transformers, tokenizers), standalone:
    python make_tiny_model.py OUTDIR
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

CORPUS = [
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "import os\nimport sys\n\nfor name in sorted(os.listdir('.')):\n    print(name)\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n"
    "        self.items.append(item)\n",
    "function add(a, b) {\n  return a + b;\n}\nconst total = [1, 2, 3].reduce(add, 0);\n",
    '#include <stdio.h>\nint main(void) {\n    printf("hello\\n");\n    return 0;\n}\n',
    "SELECT id, name FROM users WHERE active = 1 ORDER BY name;\n",
    'fn main() {\n    let v: Vec<i32> = (0..10).collect();\n    println!("{:?}", v);\n}\n',
    "You are a helpful coding assistant. Write a function that reverses a string.\n",
]

# Qwen2.5-Coder's added tokens for fill-in-the-middle and repository context (its tokenizer.json),
# so Continue's FIM template (tiers.yaml families) tokenizes to single special tokens here too.
QWEN_FIM_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
    "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
]  # fmt: skip

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def make(out: Path) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    out.mkdir(parents=True, exist_ok=True)

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<unk>", "<s>", "</s>", "<pad>", "<|user|>", "<|assistant|>", "<|system|>", *QWEN_FIM_TOKENS]
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 4096
    fast.save_pretrained(out)

    # head_dim 64: vLLM's CPU attention kernel refuses smaller heads.
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    # A generation config with no sampling surprises keeps answers reproducible.
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id}, indent=2)
    )


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: make_tiny_model.py OUTDIR", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    make(Path(sys.argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
