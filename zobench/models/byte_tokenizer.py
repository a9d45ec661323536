"""Tokenizers made in code, so tiny models need nothing from a hub: bytes (causal) and a small WordPiece (masked)."""

from __future__ import annotations

from functools import lru_cache

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIALS = ["<pad>", "<s>", "</s>"]


@lru_cache(maxsize=1)
def byte_tokenizer() -> PreTrainedTokenizerFast:
    """Every byte is one token (ids 3..258); <pad>=0, <s>=1, </s>=2. Vocabulary size 259."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    vocab.update({ch: i + len(SPECIALS) for i, ch in enumerate(sorted(alphabet))})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", model_max_length=1024)


# Words of the LM-BFF verbalizers and common English, so masked-LM prompts have one-token options.
WORDS = """terrible bad okay good great yes no maybe description entity expression human location number
the a an and or but of to in on at for with from by as is was were be been it this that these those he she they
we you i his her their our my your not very so because what who where when why how which movie film story
plot actor acting music scene fun boring funny sad happy love hate best worst nice poor fine awful
man woman people child dog cat house city country year day time world life work way thing place
question answer true false right wrong sentence word meaning same different one two three""".split()


@lru_cache(maxsize=1)
def wordpiece_tokenizer() -> PreTrainedTokenizerFast:
    """A small lower-casing WordPiece tokenizer with [CLS]/[SEP]/[MASK], made in code: masked-LM tests and demos
    need a mask token and one-token verbalizer words, which the byte tokenizer cannot give."""
    from tokenizers import normalizers, processors

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = [chr(c) for c in range(33, 127) if not chr(c).isupper()]
    vocab: dict[str, int] = {}
    for tok in [*specials, *chars, *(f"##{c}" for c in chars), *WORDS]:
        vocab.setdefault(tok, len(vocab))
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=512)
