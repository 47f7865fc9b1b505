"""Hugging Face and sentence-transformers directories built offline, as users hold them: tiny
configs saved with save_pretrained, a WordPiece tokenizer made here with the `tokenizers` library
from a small vocabulary, and a sentence-transformers layout written by hand (modules.json,
1_Pooling, 2_Normalize)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

WORDS = ("the a an is was be to of and in on at for with by from this that it he she they we you cat dog bird "
         "fish house car tree road city river sky sun moon star day night red blue green big small old new good "
         "bad fast slow happy sad runs jumps sings eats sees likes reads writes").split()


def tokenizer(folder: Path, max_length: int = 64):
    """A BERT-style WordPiece tokenizer ([CLS] ... [SEP]) saved as tokenizer.json + tokenizer_config.json."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    pieces = [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"] + list("abcdefghijklmnopqrstuvwxyz.,!?")
    vocab = {t: i for i, t in enumerate(specials + list(WORDS) + pieces)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tok.decoder = decoders.WordPiece()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=max_length)
    fast.save_pretrained(folder)
    return fast


def bert_config(**kw):
    from transformers import BertConfig

    return BertConfig(vocab_size=len(WORDS) + 61, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64, **kw)


def hf_directory(folder: Path, task: str = "feature-extraction", **config) -> Path:
    """save_pretrained of a tiny BERT for `task`, with its tokenizer."""
    import transformers

    from archfit.text import TASKS

    torch.manual_seed(0)
    model = getattr(transformers, TASKS[task]).from_config(bert_config(**config)).eval()
    model.save_pretrained(folder)
    tokenizer(folder)
    return folder


def st_directory(folder: Path, pooling: str = "mean", normalize: bool = True) -> Path:
    """A sentence-transformers directory: the transformer at the top, 1_Pooling, 2_Normalize."""
    hf_directory(folder)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (folder / "2_Normalize").mkdir()
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 48, "do_lower_case": False}))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_cls_token": pooling == "cls",
         "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": pooling == "max",
         "pooling_mode_mean_sqrt_len_tokens": False}))
    return folder


SENTENCES = ["the cat sees a bird", "a dog runs fast on the road", "the sun is big and the moon is small",
             "she reads", "happy fish jumps in the blue river at night with a green star in the sky",
             "they likes the old red car"]


def sentencepiece_model(vocab_size: int = 64) -> bytes:
    """A unigram SentencePiece model trained here on a few sentences of WORDS (<pad> 0, </s> 1, <unk> 2)."""
    import io

    import sentencepiece as spm

    corpus = [" ".join(WORDS[i:i + 7]) for i in range(0, len(WORDS) - 7, 3)] * 4
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=model, vocab_size=vocab_size,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
    return model.getvalue()


def marian_tokenizer(folder: Path) -> None:
    """MarianMT's tokenizer files as the hub holds them: source.spm, target.spm, vocab.json, no tokenizer.json."""
    import sentencepiece as spm

    model = sentencepiece_model()
    for name in ("source.spm", "target.spm"):
        (folder / name).write_bytes(model)
    sp = spm.SentencePieceProcessor(model_proto=model)
    (folder / "vocab.json").write_text(json.dumps({sp.id_to_piece(i): i for i in range(sp.get_piece_size())}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "MarianTokenizer",
                                                              "source_lang": "en", "target_lang": "de"}))


def sentencepiece_directory(folder: Path) -> Path:
    """A tiny XLM-RoBERTa saved as such models are on the hub without tokenizer.json: its tokenizer
    is a SentencePiece model (trained here on a few sentences of WORDS) and a tokenizer_config.json."""
    from transformers import XLMRobertaConfig, XLMRobertaModel

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sentencepiece.bpe.model").write_bytes(sentencepiece_model())
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "XLMRobertaTokenizer",
                                                              "model_max_length": 64}))
    torch.manual_seed(0)
    config = XLMRobertaConfig(vocab_size=70, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=64, max_position_embeddings=70)
    XLMRobertaModel(config, add_pooling_layer=False).eval().save_pretrained(folder)
    return folder


def image_directory(folder: Path) -> Path:
    """save_pretrained of a tiny ViT image classifier (3 labels) with its image processor."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, num_labels=3, id2label={0: "cat", 1: "dog", 2: "bird"},
                       label2id={"cat": 0, "dog": 1, "bird": 2})
    ViTForImageClassification(config).eval().save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5, 0.4, 0.3],
                      image_std=[0.2, 0.25, 0.3]).save_pretrained(folder)
    return folder


def detection_directory(folder: Path) -> Path:
    """save_pretrained of a tiny YOLOS detector (5 detection tokens, 3 labels) with its image processor."""
    from transformers import YolosConfig, YolosForObjectDetection, YolosImageProcessor

    torch.manual_seed(0)
    config = YolosConfig(image_size=[32, 32], patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, num_detection_tokens=5, num_labels=3,
                         id2label={0: "cat", 1: "dog", 2: "bird"}, label2id={"cat": 0, "dog": 1, "bird": 2})
    YolosForObjectDetection(config).eval().save_pretrained(folder)
    YolosImageProcessor(size={"height": 32, "width": 32}, do_pad=False).save_pretrained(folder)
    return folder
