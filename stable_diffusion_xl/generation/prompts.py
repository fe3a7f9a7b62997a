"""Prompt encoding: compel for long prompts and weighting syntax, diffusers' own encoder for the plain rest.

Every prompt and negative prompt is read as compel 2.5 reads it (`(words)1.3`, `word++`, `word--`, ...).
A batch whose texts all read as one unweighted text of at most 75 tokens goes to diffusers' `encode_prompt`,
called exactly as before compel: its embeddings, and so its images, stay bit for bit what they were. Any
other batch goes through compel, which encodes every 75 tokens as one chunk through each text encoder
(penultimate hidden states; the base concatenates its two encoders', the refiner uses text_encoder_2
alone) and pads the shorter texts, negatives included, with its encoding of "" to the longest one's length.

The pooled embedding (text_encoder_2's projection, which SDXL conditions on besides the tokens) is one
vector per text, from its first 75 tokens with compel's syntax removed, as diffusers makes it.

Prompts never reach a log line or an error message: compel's own messages quote them, so they are
replaced by the exception's type.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass

import pyparsing
import torch
from compel import Compel, ReturnedEmbeddingsType
from compel.prompt_parser import Blend, Conjunction, CrossAttentionControlSubstitute, FlattenedPrompt, PromptParser

log = logging.getLogger(__name__)

NAMES = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
# Every piece of compel's syntax needs a parenthesis, a double quote or a backslash (`(...)1.3`, `"..."`, `\(`,
# `.blend(`, `.and(`, `.swap(`, `withLora(`), or a + or - that ends a word (`word++`, `word--`; inside a word, as in
# `well-lit`, they are letters). A text without any is encoded as written, unparsed: pyparsing takes 0.3 ms or more
# per character, and compel's parser would return the same words (it only puts a space after each comma).
_SYNTAX = re.compile(r'[()"\\]|[+-](?=[\s()",.+\-=\\]|$)')
_READINGS_KEPT = 256
# compel's grammar backtracks: without memoization, parsing takes exponential time in the nesting of parentheses
# (about 4x a level: "((((((cat))))))" took 10 s, "((((((((a" 87 s). With pyparsing's packrat cache, turned on
# process-wide as pyparsing documents it (its default size, 128 entries), they take milliseconds, and no
# 4000-character prompt took more than 2.5 s; nesting deeper than about 30 raises RecursionError at once.
pyparsing.ParserElement.enable_packrat()


class PromptError(RuntimeError):
    """compel could not encode a prompt. The message names no prompt: compel's own would quote it."""


@dataclass(frozen=True)
class Reading:
    """A prompt as compel reads it."""

    conjunction: Conjunction  # what compel encodes
    text: str  # its words, compel's syntax removed: the pooled embedding's text
    tokens: int  # CLIP tokens the text encoders see, without the start and end tokens of each chunk
    unweighted: bool  # one text, every weight 1: compel would encode exactly `text`


class PromptEncoder:
    """Text embeddings for a batch of prompts, for the base (two text encoders) or the refiner (one)."""

    def __init__(self, base, refiner):
        self.chunk = base.tokenizer_2.model_max_length - 2  # 75 tokens, between a start and an end token
        self._compels: dict[int, Compel] = {}
        for pipeline in (base, refiner):
            for tokenizer, encoder in _encoders(pipeline):
                if id(encoder) not in self._compels:  # the refiner shares the base's text_encoder_2
                    self._compels[id(encoder)] = Compel(
                        tokenizer=tokenizer, text_encoder=encoder, truncate_long_prompts=False,
                        returned_embeddings_type=ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED,
                    )
        self._counter = self._compels[id(base.text_encoder_2)].conditioning_provider
        self._parser = PromptParser()
        self.read = functools.lru_cache(maxsize=_READINGS_KEPT)(self._read)

    def token_counts(self, prompt: str, negative_prompt: str) -> dict[str, int]:
        """What usage reports: the tokens of the prompt and of the negative prompt, compel's syntax removed."""
        return {"prompt": self.read(prompt).tokens, "negative-prompt": self.read(negative_prompt).tokens}

    def batch_key(self, prompt: str, negative_prompt: str) -> tuple:
        """What must match for two requests' texts to share a batch and each encode as it would alone: the same
        encoder (encode_prompt or compel) and, for compel, the same number of 75-token chunks (a batch is
        padded to its longest text)."""
        if self.fits(prompt) and self.fits(negative_prompt):
            return ("encode_prompt",)
        return ("compel", *(-(-max(self.read(text).tokens, 1) // self.chunk) for text in (prompt, negative_prompt)))

    def fits(self, text: str) -> bool:
        """Whether diffusers' encode_prompt encodes `text` as compel reads it: unweighted, one chunk."""
        reading = self.read(text)
        return reading.unweighted and reading.tokens <= self.chunk

    def encode(self, pipeline, prompts: list[str], negatives: list[str] | None, guidance: bool
               ) -> dict[str, torch.Tensor | None]:
        """The embeddings `pipeline` takes for `prompts`; negatives only with guidance. No negatives (None)
        gives the base zero embeddings (its force_zeros_for_empty_prompt) and the refiner those of ""."""
        negatives = negatives if guidance else None
        with torch.inference_mode():
            if all(self.fits(text) for text in prompts + (negatives or [])):
                embeds = pipeline.encode_prompt(
                    prompt=[self.read(text).text for text in prompts],
                    negative_prompt=None if negatives is None else [self.read(text).text for text in negatives],
                    device=pipeline.device, num_images_per_prompt=1, do_classifier_free_guidance=guidance,
                )
                return dict(zip(NAMES, embeds))
            return self.encode_with_compel(pipeline, prompts, negatives, guidance)

    def encode_with_compel(self, pipeline, prompts: list[str], negatives: list[str] | None, guidance: bool
                           ) -> dict[str, torch.Tensor | None]:
        """`encode`, every text through compel, whatever its length."""
        zeros = guidance and negatives is None and pipeline.config.force_zeros_for_empty_prompt
        if guidance and negatives is None and not zeros:
            negatives = [""] * len(prompts)  # as encode_prompt does without force_zeros_for_empty_prompt
        texts = prompts + (negatives if guidance and not zeros else [])
        with torch.inference_mode():
            readings = [self.read(text) for text in texts]
            embeds = self._embeddings(pipeline, readings)
            # Prompts and negatives apart, as encode_prompt does: a batch's size moves the last bit of the pooled.
            pooled = torch.cat([self._pooled(pipeline, [reading.text for reading in part])
                                for part in (readings[:len(prompts)], readings[len(prompts):]) if part])
        dtype, device, count = pipeline.text_encoder_2.dtype, pipeline.device, len(prompts)
        embeds, pooled = embeds.to(device=device, dtype=dtype), pooled.to(device=device, dtype=dtype)
        encoded = {"prompt_embeds": embeds[:count], "pooled_prompt_embeds": pooled[:count],
                   "negative_prompt_embeds": None, "negative_pooled_prompt_embeds": None}
        if zeros:
            encoded["negative_prompt_embeds"] = torch.zeros_like(embeds)
            encoded["negative_pooled_prompt_embeds"] = torch.zeros_like(pooled)
        elif guidance:
            encoded["negative_prompt_embeds"], encoded["negative_pooled_prompt_embeds"] = embeds[count:], pooled[count:]
        return encoded

    def _read(self, text: str) -> Reading:
        conjunction = _literal(text)
        if _SYNTAX.search(text):
            try:
                parsed = self._parser.parse_conjunction(text)
            except Exception as error:  # RecursionError from deep nesting, too
                failure = type(error).__name__
            else:
                failure = None
                if parsed.prompts:  # not only withLora(...) terms
                    conjunction = parsed
            if failure:
                log.warning("compel cannot parse a prompt (%s): its text is encoded as it is", failure)
        fragments = [fragment for prompt in conjunction.prompts for fragment in _fragments(prompt)]
        token_ids = self._counter.get_token_ids([fragment.text for fragment in fragments],
                                                include_start_and_end_markers=False)
        prompt = conjunction.prompts[0] if len(conjunction.prompts) == 1 else None
        unweighted = (type(prompt) is FlattenedPrompt and conjunction.weights == [1.0]
                      and not prompt.wants_cross_attention_control
                      and all(fragment.weight == 1 for fragment in prompt.children))
        return Reading(conjunction, " ".join(fragment.text for fragment in fragments),
                       sum(len(ids) for ids in token_ids), unweighted)

    def _embeddings(self, pipeline, readings: list[Reading]) -> torch.Tensor:
        """compel's per-token embeddings of each text, padded to the longest, encoders side by side."""
        compels = [self._compels[id(encoder)] for _, encoder in _encoders(pipeline)]
        columns = []
        for compel in compels:
            compel.conditioning_provider._empty_z = None  # its "" of the encoder as it is now, adapters included
            columns.append([_conditioning(compel, reading) for reading in readings])
        length = max(conditioning.shape[1] for column in columns for conditioning in column)
        return torch.cat([torch.cat(_padded(compel, column, length)) for compel, column in zip(compels, columns)],
                         dim=-1)

    @staticmethod
    def _pooled(pipeline, texts: list[str]) -> torch.Tensor:
        """text_encoder_2's pooled projection of each text's first 75 tokens, as encode_prompt makes it."""
        tokenizer, encoder = pipeline.tokenizer_2, pipeline.text_encoder_2
        ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        return encoder(ids.to(encoder.device), output_hidden_states=True)[0]


def _encoders(pipeline) -> list[tuple]:
    """(tokenizer, text encoder) pairs in encode_prompt's order: the base has two, the refiner one."""
    pairs = [(getattr(pipeline, "tokenizer", None), getattr(pipeline, "text_encoder", None)),
             (pipeline.tokenizer_2, pipeline.text_encoder_2)]
    return [(tokenizer, encoder) for tokenizer, encoder in pairs if encoder is not None]


def _literal(text: str) -> Conjunction:
    return Conjunction([FlattenedPrompt([(text, 1.0)])], [1.0])


def _fragments(prompt):
    """The weighted fragments compel encodes for one part of a conjunction (a .swap() keeps its original)."""
    for flattened in prompt.prompts if isinstance(prompt, Blend) else [prompt]:
        for child in flattened.children:
            yield from child.original if isinstance(child, CrossAttentionControlSubstitute) else [child]


def _conditioning(compel: Compel, reading: Reading) -> torch.Tensor:
    """compel's embeddings of one text, (1, tokens, width). Should compel fail on its syntax, the text's words
    are encoded unweighted; its messages quote the prompt, so only the exception's type is kept."""
    failures = []
    for attempt in (reading.conjunction, _literal(reading.text)):
        try:
            return compel.build_conditioning_tensor_for_conjunction(attempt)[0]
        except Exception as error:
            failures.append(type(error).__name__)
        if len(failures) == 1:
            log.warning("compel failed on the syntax of a prompt (%s): encoding its words unweighted", failures[0])
    raise PromptError(f"compel could not encode a prompt ({', '.join(failures)})")


def _padded(compel: Compel, conditionings: list[torch.Tensor], length: int) -> list[torch.Tensor]:
    """compel's padding: its encoding of "" appended, a chunk at a time, up to `length` tokens."""
    longest = conditionings[0].new_empty(1, length, conditionings[0].shape[-1])
    return compel.pad_conditioning_tensors_to_same_length([*conditionings, longest])[:-1]
