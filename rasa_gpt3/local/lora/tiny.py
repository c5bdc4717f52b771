"""A stand-in base model for tests and benchmarks: random weights and a BPE tokenizer trained on a bot's texts.

No pretrained weights can be downloaded where this project is tested, so tests and benchmarks build their base
model on the spot: a Llama config with seeded random weights (the "tiny" preset: 2 layers, hidden size 64; the
"qwen2-0.5b" preset: Qwen2.5-0.5B's shape, for realistic timings), a byte-level BPE tokenizer trained with
`tokenizers` on the given texts, and a ChatML chat template, all saved with save_pretrained into a directory that
is then used as `--base-model /that/dir`. It learns the bot's data (slowly), but it knows no language: it is a
stand-in for exercising the real machinery, never a model to serve users.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterable, List, Union

from rasa_gpt3 import prompts
from rasa_gpt3.local.lora.errors import require_installed

END_OF_TEXT, TURN_START, TURN_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

PRESETS: Dict[str, Dict[str, Any]] = {
    # learns financial-demo's intents on CPU in well under a minute per epoch; a larger initializer range than
    # Llama's 0.02 gives the random output layer logits large enough for LoRA on the inner layers to move
    "tiny": {
        "architecture": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 1024,
        "initializer_range": 0.1,
        "tie_word_embeddings": False,
    },
    # the tiny shape with 2 attention heads of 32 dimensions: vLLM's CPU attention has no kernel for heads of 16
    "tiny-vllm": {
        "architecture": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "initializer_range": 0.1,
        "tie_word_embeddings": False,
    },
    # Qwen2.5-0.5B's shape (494M parameters with its 151,936-token vocabulary), random weights
    "qwen2-0.5b": {
        "architecture": "qwen2",
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "max_position_embeddings": 32768,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
        "rope_theta": 1000000.0,
    },
}


def bot_texts(project_dir: Union[str, Path]) -> List[str]:
    """Every line of a Rasa project's YAML files plus the prompts' fixed texts: a corpus for the tokenizer."""
    lines = list(prompts.SYSTEM_PROMPTS.values()) + [prompts.SEPARATOR, prompts.STOP]
    for path in sorted(Path(project_dir).rglob("*.yml")):
        lines.extend(line.strip(" -") for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return lines


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024, chat_template: bool = True) -> Any:
    """A byte-level BPE tokenizer trained on `texts`, as a transformers fast tokenizer (ChatML template)."""
    require_installed()
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT, TURN_START, TURN_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(list(texts), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=TURN_END, pad_token=END_OF_TEXT, model_max_length=None
    )
    if chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_tiny_model(
    out_dir: Union[str, Path],
    texts: Iterable[str],
    *,
    preset: str = "tiny",
    seed: int = 0,
    vocab_size: int = 1024,
    chat_template: bool = True,
) -> Path:
    """Writes a random-weight causal LM of `preset` and its tokenizer trained on `texts` to `out_dir`."""
    require_installed()
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    options = dict(PRESETS[preset])
    architecture = options.pop("architecture")
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size, chat_template=chat_template)
    options.setdefault("vocab_size", len(tokenizer))
    options["max_position_embeddings"] = options.get("max_position_embeddings", 1024)
    tokenizer.model_max_length = options["max_position_embeddings"]
    config_class, model_class = (
        (LlamaConfig, LlamaForCausalLM) if architecture == "llama" else (Qwen2Config, Qwen2ForCausalLM)
    )
    config = config_class(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None, **options
    )
    torch.manual_seed(seed)
    model = model_class(config)
    out_dir = Path(out_dir)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return out_dir
