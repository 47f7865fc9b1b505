"""Models as users hold them: a Hugging Face directory (`save_pretrained` output) or a
sentence-transformers directory, read into a torch module for one task, example inputs made by
the directory's own tokenizer, and the text front (text/io.py) that a compiled file carries.

Loading runs no code from the directory: transformers with `trust_remote_code` off and local
files only (safetensors, or PyTorch weights through `weights_only` loading); the tokenizer is its
JSON. Task names are Optimum's; the default comes from the config's `architectures`."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelError, first_line
from .io import TextIO

# Optimum's task names -> transformers' auto class
TASKS = {
    "feature-extraction": "AutoModel",
    "fill-mask": "AutoModelForMaskedLM",
    "text-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "question-answering": "AutoModelForQuestionAnswering",
    "text2text-generation": "AutoModelForSeq2SeqLM",  # compiled by trace_seq2seq (load_generator), not read_directory
    "text-generation": "AutoModelForCausalLM",  # compiled by trace_generate (load_generator), not read_directory
    "image-classification": "AutoModelForImageClassification",  # images through its processor (text/image.py)
    "object-detection": "AutoModelForObjectDetection",
}
GENERATE = "text2text-generation"
IMAGE_TASKS = ("image-classification", "object-detection")
CAUSAL = "text-generation"
# the end of an architecture's class name -> its task (BertForMaskedLM -> fill-mask)
_ARCHITECTURE_TASKS = (("ForSequenceClassification", "text-classification"),
                       ("ForTokenClassification", "token-classification"),
                       ("ForQuestionAnswering", "question-answering"), ("ForMaskedLM", "fill-mask"),
                       ("ForConditionalGeneration", GENERATE), ("MTModel", GENERATE),
                       ("ForCausalLM", CAUSAL), ("LMHeadModel", CAUSAL),
                       ("ForImageClassification", "image-classification"),
                       ("ForObjectDetection", "object-detection"),
                       ("Model", "feature-extraction"))
_OUTPUTS = {"feature-extraction": "last_hidden_state", "fill-mask": "logits", "text-classification": "logits",
            "token-classification": "logits"}
POOLING = ("cls", "max", "mean", "mean_sqrt_len_tokens")  # sentence-transformers' order when several are on


def is_directory(path: Any) -> bool:
    """A Hugging Face or sentence-transformers directory (a config.json or modules.json in it)."""
    if not isinstance(path, (str, os.PathLike)) or not os.path.isdir(path):
        return False
    return os.path.isfile(os.path.join(path, "config.json")) or os.path.isfile(os.path.join(path, "modules.json"))


@dataclass(frozen=True)
class Directory:
    """A directory read for one task: the module archfit traces (inputs by name, outputs a dict
    named for the task), example inputs at the length asked, and the text front."""

    module: torch.nn.Module
    inputs: dict[str, torch.Tensor]
    name: str
    text: TextIO | None
    image: Any = None  # an image directory's front (text/image.py ImageIO) instead of the text front


class TaskModel(torch.nn.Module):
    """A transformers model with token inputs by name and the task's outputs as a dict of tensors
    (a stable signature for files, the server and the text front, whatever the model class)."""

    def __init__(self, model: torch.nn.Module, task: str, pooling: tuple[str, ...] = (), normalize: bool = False,
                 dense: torch.nn.Module | None = None):
        super().__init__()
        self.model, self.task, self.pooling, self.normalize = model, task, pooling, normalize
        self.dense = dense

    def forward(self, input_ids, attention_mask, token_type_ids=None, position_ids=None):
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        if position_ids is not None:  # packed rows: positions restart at each sequence
            extra["position_ids"] = position_ids
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra)
        if self.task == "question-answering":
            return {"start_logits": out.start_logits, "end_logits": out.end_logits}
        if not self.pooling:
            return {_OUTPUTS[self.task]: out[_OUTPUTS[self.task]] if isinstance(out, dict) else out[0]}
        return {"embedding": self.embed(out.last_hidden_state, attention_mask)}

    def embed(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return sentence_embedding(tokens, attention_mask, self.pooling, self.normalize, self.dense)

    def tokens_only(self) -> "TaskModel":
        """The encoder with its token states out, the pooling left to the host: packed rows hold
        several texts, and pooling over a row would mix them (text/io.py pools each text's own)."""
        if self.dense is not None:
            raise ModelError("a sentence-transformers directory with a Dense module cannot be packed yet (the Dense "
                             "would run after pooling, on the host); compile it with buckets")
        return TaskModel(self.model, "feature-extraction")


def sentence_embedding(tokens: torch.Tensor, attention_mask: torch.Tensor, modes: tuple[str, ...], normalize: bool,
                       dense: torch.nn.Module | None = None) -> torch.Tensor:
    """sentence-transformers' Pooling (masked, its modes concatenated in its order), then its Dense
    and Normalize: in the graph (TaskModel), or per text on the host for packed rows (text/io.py)."""
    mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
    count = mask.sum(1).clamp(min=1e-9)
    parts = []
    for mode in modes:
        if mode == "cls":
            parts.append(tokens[:, 0])
        elif mode == "max":
            parts.append(tokens.masked_fill(mask == 0, float("-inf")).max(1).values)
        else:
            total = (tokens * mask).sum(1)
            parts.append(total / (count if mode == "mean" else count.sqrt()))
    out = torch.cat(parts, -1) if len(parts) > 1 else parts[0]
    if dense is not None:
        out = dense(out)
    return torch.nn.functional.normalize(out, p=2, dim=1) if normalize else out


def read_directory(path: str | os.PathLike, task: str | None = None, length: int | None = None,
                   batch: int = 1) -> Directory:
    """The directory's model for `task` (default: from its config), example inputs of `batch`
    rows at `length` tokens (default: 128, or less where the model's limit is lower)."""
    root = Path(path)
    modules = _st_modules(root)
    base = root / modules["transformer"] if modules else root
    config = _json(base / "config.json")
    task = _task(root, config, task, sentence=bool(modules))
    if task in (GENERATE, CAUSAL):
        call = "trace_seq2seq" if task == GENERATE else "trace_generate"
        raise ModelError(f"{root} is a {task} model: it compiles for generation, the loop on the host: "
                         f"archfit compile DIR --generate, or archfit.{call}(DIR)")
    model = _load(base, task)
    if task in IMAGE_TASKS:
        return _image_directory(root, model, task, batch)
    tokenizer_json, tok_config = _tokenizer(root, base)
    limit = min(x for x in (getattr(model.config, "max_position_embeddings", None) or 512,
                            tok_config.get("model_max_length") if isinstance(tok_config.get("model_max_length"), int)
                            else None, modules.get("max_seq_length") if modules else None) if x)
    if modules and modules.get("max_seq_length"):
        limit = modules["max_seq_length"]
    length = min(length or 128, limit)
    names = ["input_ids", "attention_mask"]
    if getattr(model.config, "type_vocab_size", 0) > 1:  # BERT's segment ids (RoBERTa has one type: none)
        names.append("token_type_ids")
    if modules:
        wrapper = TaskModel(model, task, modules["pooling"], modules["normalize"], modules.get("dense"))
    else:
        wrapper = TaskModel(model, task)
    labels = _labels(model.config) if task in ("text-classification", "token-classification") else ()
    text = TextIO(task, tokenizer_json, tuple(names), limit, _pad_id(model.config, tok_config, tokenizer_json),
                  labels, getattr(model.config, "problem_type", None) == "multi_label_classification",
                  embedding=bool(modules))
    inputs = text.example(batch, length, model.config.vocab_size)
    return Directory(wrapper.eval(), inputs, root.resolve().name, text)


class ImageTaskModel(torch.nn.Module):
    """An image model with pixel_values in and its task's outputs as a dict: {"logits"} for a
    classifier, {"logits", "pred_boxes"} for a detector (what the processor's post-processing reads)."""

    def __init__(self, model: torch.nn.Module, task: str):
        super().__init__()
        self.model, self.task = model, task

    def forward(self, pixel_values):
        out = self.model(pixel_values=pixel_values)
        if self.task == "object-detection":
            return {"logits": out.logits, "pred_boxes": out.pred_boxes}
        return {"logits": out.logits}


def _image_directory(root: Path, model, task: str, batch: int) -> Directory:
    """An image-classification or object-detection directory: its model, and its image processor
    as the file's front (example inputs: the processor's pixels of a plain image, at its size)."""
    from .image import ImageIO

    processor = root / "preprocessor_config.json"
    if not processor.is_file():
        raise ModelError(f"{root} has no preprocessor_config.json: save the model's image processor there "
                         f"(processor.save_pretrained(DIR)) so images can be prepared as in training")
    image = ImageIO(task, processor.read_text(encoding="utf-8"), _labels(model.config),
                    getattr(model.config, "problem_type", None) == "multi_label_classification")
    try:
        inputs = image.example(batch)
    except Exception as e:  # noqa: BLE001 - transformers' processor errors become one line naming the file
        raise ModelError(f"{processor}: transformers cannot prepare an image with it ({type(e).__name__}: "
                         f"{first_line(e, 160)})") from e
    return Directory(ImageTaskModel(model, task).eval(), inputs, root.resolve().name, None, image)


def load_generator(path: str | os.PathLike, task: str = GENERATE) -> torch.nn.Module:
    """A text2text-generation directory's model (MarianMT, BART, Pegasus, T5) or a text-generation
    one's (GPT-2, OPT, Llama, Qwen2), loaded as every directory is: local files only, no code from it."""
    root = Path(path)
    _task(root, _json(root / "config.json"), task, sentence=False)
    return _load(root, task)


def directory_task(path: str | os.PathLike) -> str | None:
    """The task a directory's config names by its architecture (None when it names none)."""
    try:
        return _task(Path(path), _json(Path(path) / "config.json"), None, sentence=False)
    except ModelError:
        return None


def generation_text(path: str | os.PathLike, source_len: int, task: str = GENERATE) -> TextIO | None:
    """A generation directory's tokenizer as the file's text front (sources or prompts cut at the
    largest bucket), or None where it has none archfit can read (SentencePiece-only ones are converted,
    MarianMT's carried as its SentencePiece models: text/sentencepiece.py)."""
    root = Path(path)
    try:
        tokenizer_json, tok_config = _tokenizer(root, root)
    except ModelError:
        return None
    config = _json(root / "config.json")
    pad = config.get("pad_token_id")
    if not isinstance(pad, int):  # GPT-2 has none: transformers pads generation with the EOS id
        eos = config.get("eos_token_id")
        pad = eos if isinstance(eos, int) else 0
    return TextIO(task, tokenizer_json, ("input_ids", "attention_mask"), source_len, pad)


def _json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except FileNotFoundError:
        raise ModelError(f"{path} is missing: a Hugging Face directory needs it (save the model with "
                         f"save_pretrained)") from None
    except (OSError, ValueError) as e:
        raise ModelError(f"{path} is not readable JSON ({first_line(e, 120)})") from e
    if not isinstance(value, (dict, list)):
        raise ModelError(f"{path}: expected a JSON object")
    return value


def _task(root: Path, config: dict, task: str | None, sentence: bool) -> str:
    if sentence:
        if task not in (None, "feature-extraction", "sentence-similarity"):
            raise ModelError(f"{root} is a sentence-transformers directory: its task is feature-extraction, not {task!r}")
        return "feature-extraction"
    if task is not None:
        if task not in TASKS:
            raise ModelError(f"task {task!r} is not one archfit reads from a directory; the tasks are "
                             f"{', '.join(TASKS)}")
        return task
    for arch in config.get("architectures") or []:
        for suffix, name in _ARCHITECTURE_TASKS:
            if str(arch).endswith(suffix):
                return name
    raise ModelError(f"{root}/config.json names no architecture archfit knows the task of "
                     f"({config.get('architectures')}); pass --task (one of {', '.join(TASKS)})")


def _load(base: Path, task: str) -> torch.nn.Module:
    import transformers

    from transformers.utils import logging

    auto = getattr(transformers, TASKS[task])
    bars = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()  # archfit's own progress line is the one a terminal shows
    try:
        # local files only, no code from the directory; .bin weights go through weights_only loading
        model = auto.from_pretrained(str(base), local_files_only=True, trust_remote_code=False)
    except Exception as e:  # noqa: BLE001 - transformers' loader errors become one line naming the directory
        raise ModelError(f"{base}: transformers cannot load it as {task} ({type(e).__name__}: {first_line(e, 200)})"
                         ) from e
    finally:
        if bars:
            logging.enable_progress_bar()
    return model.eval()


def _tokenizer(root: Path, base: Path) -> tuple[str, dict]:
    """The directory's tokenizer as tokenizer.json text (data, kept in the file), and its config."""
    for where in dict.fromkeys((root, base)):
        if (where / "tokenizer.json").is_file():
            config = _json(where / "tokenizer_config.json") if (where / "tokenizer_config.json").is_file() else {}
            return (where / "tokenizer.json").read_text(encoding="utf-8"), config
    try:  # a slow tokenizer's files only (vocab.txt, a SentencePiece model): transformers converts them
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(root), local_files_only=True, trust_remote_code=False)
        if getattr(tok, "backend_tokenizer", None) is None:  # MarianTokenizer: SentencePiece models only
            from .sentencepiece import marian_document

            document = marian_document(root)
            if document is not None:
                return document, {"model_max_length": tok.model_max_length}
        return tok.backend_tokenizer.to_str(), {"model_max_length": tok.model_max_length}
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"{root} has no tokenizer.json and transformers cannot make one from its files "
                         f"({first_line(e, 160)}); save the tokenizer there with save_pretrained") from e


def _pad_id(config, tok_config: dict, tokenizer_json: str) -> int:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer_json)
    token = tok_config.get("pad_token")
    token = token.get("content") if isinstance(token, dict) else token
    found = tok.token_to_id(token) if isinstance(token, str) else None
    if found is not None:
        return found
    return int(getattr(config, "pad_token_id", None) or 0)


def _labels(config) -> tuple[str, ...]:
    id2label = getattr(config, "id2label", None) or {}
    return tuple(str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(config.num_labels))


def _st_modules(root: Path) -> dict | None:
    """A sentence-transformers directory's modules.json read: the transformer's folder, the
    pooling modes, Dense and Normalize; None when it is a plain Hugging Face directory."""
    if not (root / "modules.json").is_file():
        return None
    out: dict[str, Any] = {"transformer": "", "pooling": ("mean",), "normalize": False}
    for m in _json(root / "modules.json"):
        kind = str(m.get("type", "")).rsplit(".", 1)[-1]
        folder = root / str(m.get("path", ""))
        if kind == "Transformer":
            out["transformer"] = str(m.get("path", ""))
            cfg = folder / "sentence_bert_config.json"
            if cfg.is_file():
                out["max_seq_length"] = _json(cfg).get("max_seq_length")
        elif kind == "Pooling":
            out["pooling"] = _pooling(_json(folder / "config.json"), folder)
        elif kind == "Dense":
            out["dense"] = _dense(folder)
        elif kind == "Normalize":
            out["normalize"] = True
        else:
            raise ModelError(f"{root}/modules.json lists a {kind!r} module; archfit reads Transformer, Pooling, "
                             f"Dense and Normalize")
    return out


def _pooling(config: dict, folder: Path) -> tuple[str, ...]:
    if isinstance(config.get("pooling_mode"), (str, list)):  # sentence-transformers 6's own key
        modes = config["pooling_mode"]
        modes = (modes,) if isinstance(modes, str) else tuple(modes)
        modes = tuple("mean_sqrt_len_tokens" if m == "mean_sqrt_len" else m for m in modes)
    else:
        modes = tuple(m for m in POOLING if config.get(f"pooling_mode_{m}" + ("_token" if m == "cls" else
                                                                                 "" if m == "mean_sqrt_len_tokens"
                                                                                 else "_tokens")))
    unknown = [m for m in modes if m not in POOLING]
    if unknown or not modes:
        raise ModelError(f"{folder}/config.json: pooling {unknown or 'none'} is not one archfit computes "
                         f"({', '.join(POOLING)})")
    return modes


_ACTIVATIONS = {"Tanh": torch.nn.Tanh, "Identity": torch.nn.Identity, "ReLU": torch.nn.ReLU, "GELU": torch.nn.GELU,
                "Sigmoid": torch.nn.Sigmoid}


def _dense(folder: Path) -> torch.nn.Module:
    """A sentence-transformers Dense layer: its config and weights (safetensors, or weights_only)."""
    config = _json(folder / "config.json")
    activation = str(config.get("activation_function", "torch.nn.modules.linear.Identity")).rsplit(".", 1)[-1]
    if activation not in _ACTIVATIONS:
        raise ModelError(f"{folder}/config.json: activation {activation!r} is not one archfit builds "
                         f"({', '.join(_ACTIVATIONS)})")
    linear = torch.nn.Linear(int(config["in_features"]), int(config["out_features"]), bool(config.get("bias", True)))
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        state = load_file(str(folder / "model.safetensors"))
    else:
        state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    linear.load_state_dict({k.removeprefix("linear."): v for k, v in state.items()})
    return torch.nn.Sequential(linear, _ACTIVATIONS[activation]())
