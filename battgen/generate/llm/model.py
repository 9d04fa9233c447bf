"""Tokenizer, base model and LoRA wrapping of the crystal language model.

Two routes to a base model:

- a Hugging Face causal LM (``meta-llama/Llama-3.1-8B`` or a local directory), loaded the normal way with
  ``AutoModelForCausalLM.from_pretrained`` (hub ids need internet);
- offline: a small GPT-2 that battgen pre-trains from scratch on the training texts, with a byte-level BPE
  tokenizer trained on the same texts. Digits are split before BPE, so every digit is one token, as the
  LLaMA tokenizer does for the seed's model (seed 000 §2.3).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
GPT2_LIKE = ("gpt2", "gpt_neo", "gptj", "codegen")  # Conv1D attention: c_attn, weights stored transposed
LLAMA_LIKE_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
NO_CUDA_FALLBACK_MESSAGE = "4-bit quantisation needs a CUDA GPU; training in full precision on CPU"
NO_CUDA_ERROR_MESSAGE = (
    "4-bit quantisation needs a CUDA GPU and none is available; set quantize_4bit_cpu_fallback: true to "
    "train in full precision on CPU instead, or quantize_4bit: false"
)


class BaseModelUnavailableError(OSError):
    """A base model id or directory could not be loaded (usually: a hub id without internet)."""


def train_tokenizer(texts: list[str], vocab_size: int = 512, min_frequency: int = 2):
    """A byte-level BPE tokenizer trained on ``texts``, digits always single tokens; a transformers
    ``PreTrainedTokenizerFast`` with ``<pad>``, ``<s>``, ``</s>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD)


def _check_local_path(name_or_dir: str | Path) -> None:
    """A path that is clearly local but absent fails at once (the hub lookup would retry for seconds)."""
    text = str(name_or_dir)
    looks_local = isinstance(name_or_dir, Path) or text.startswith(("/", "./", "../", "~"))
    if looks_local and not Path(text).expanduser().is_dir():
        raise BaseModelUnavailableError(_unavailable_message(text, FileNotFoundError(f"no directory {text}")))


def load_tokenizer(name_or_dir: str | Path):
    from transformers import AutoTokenizer

    _check_local_path(name_or_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_dir))
    except Exception as exc:  # noqa: BLE001 - hub/network/format errors all mean "cannot use this model"
        raise BaseModelUnavailableError(_unavailable_message(name_or_dir, exc)) from exc
    if tokenizer.pad_token is None:  # LLaMA has no padding token; padded positions are masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _unavailable_message(name: str | Path, exc: Exception) -> str:
    return (
        f"cannot load base model {str(name)!r} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
        "A Hugging Face hub id needs internet access (and, for gated models such as meta-llama, an accepted "
        "licence); give a local model directory instead, or set base_model: null to pre-train a small GPT-2 "
        "from scratch offline."
    )


def build_gpt2(tokenizer, n_layer: int, n_embd: int, n_head: int, n_positions: int, dropout: float):
    """A randomly initialised GPT-2 sized by the arguments, vocabulary from ``tokenizer``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
        resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(config)


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_quantization(quantize_4bit: bool, cpu_fallback: bool, has_cuda: bool | None = None) -> bool:
    """Whether to load the base model in 4 bit. Without CUDA, a 4-bit request raises (RuntimeError)
    unless ``cpu_fallback`` allows full precision, which is then announced with a warning."""
    if not quantize_4bit:
        return False
    has_cuda = cuda_available() if has_cuda is None else has_cuda
    if has_cuda:
        return True
    if not cpu_fallback:
        raise RuntimeError(NO_CUDA_ERROR_MESSAGE)
    warnings.warn(NO_CUDA_FALLBACK_MESSAGE, RuntimeWarning, stacklevel=2)
    print(NO_CUDA_FALLBACK_MESSAGE)
    return False


def load_base_model(name_or_dir: str | Path, quantize_4bit: bool = False, device: str = "cpu"):
    """``AutoModelForCausalLM.from_pretrained`` the normal way; in 4 bit through bitsandbytes when asked
    (the caller checked CUDA with :func:`resolve_quantization`)."""
    import torch
    from transformers import AutoModelForCausalLM

    _check_local_path(name_or_dir)
    kwargs: dict[str, Any] = {}
    if quantize_4bit:
        try:
            from transformers import BitsAndBytesConfig
            import bitsandbytes  # noqa: F401 - fail here with a clear message rather than deep in transformers
        except ImportError as exc:
            raise RuntimeError("4-bit quantisation needs the bitsandbytes package (pip install bitsandbytes)") from exc
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        kwargs["device_map"] = {"": torch.device(device).index or 0}  # the CUDA device asked for
    try:
        model = AutoModelForCausalLM.from_pretrained(str(name_or_dir), **kwargs)
    except Exception as exc:  # noqa: BLE001 - see _unavailable_message
        raise BaseModelUnavailableError(_unavailable_message(name_or_dir, exc)) from exc
    if quantize_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model)
    else:
        model = model.to(device)
    return model


def lora_target_modules(model, configured: list[str] | None) -> tuple[list[str], bool]:
    """(target modules, fan_in_fan_out) for the architecture: ``c_attn`` (Conv1D, transposed weights) for
    GPT-2, the attention projections for LLaMA-like models, or the configured list."""
    model_type = getattr(model.config, "model_type", "")
    fan_in_fan_out = model_type in GPT2_LIKE
    if configured:
        return list(configured), fan_in_fan_out
    if model_type in GPT2_LIKE:
        return ["c_attn"], True
    return list(LLAMA_LIKE_TARGETS), False


def wrap_with_lora(model, r: int, alpha: float, dropout: float, target_modules: list[str] | None = None):
    """A peft model whose only trainable parameters are the LoRA matrices."""
    from peft import LoraConfig, get_peft_model

    targets, fan_in_fan_out = lora_target_modules(model, target_modules)
    config = LoraConfig(
        r=int(r), lora_alpha=float(alpha), lora_dropout=float(dropout), target_modules=targets,
        fan_in_fan_out=fan_in_fan_out, bias="none", task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def count_parameters(model) -> dict[str, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "total": total}
