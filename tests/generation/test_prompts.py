"""Long prompts and compel's weighting syntax (stable_diffusion_xl/prompts.py), on the demo weights."""

import logging
import re
import sys

import pytest
import torch
from compel import Compel
from compel.prompt_parser import FlattenedPrompt, PromptParser
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import pixels, request
from stable_diffusion_xl.apis.instill import usage
from stable_diffusion_xl.generation.prompts import _SYNTAX, NAMES, PromptError

SENTENCE = "a grey cat naps on a sunny windowsill beside a pot of red flowers. "  # 17 tokens
LONG = SENTENCE * 11 + "outside, a small dog chases a red ball across the green lawn"  # 200 tokens
LONG_OTHER_END = LONG.replace("a red ball", "a blue kite")
CHUNK = 77  # 75 tokens between a start and an end token


def encode(engine, pipeline, prompts, negatives=None):
    return engine.prompts.encode(pipeline, prompts, negatives, guidance=True)


def encode_prompt(pipeline, prompts, negatives=None):
    """diffusers' own encoding, as the engine called it before compel: it truncates at 77 tokens."""
    with torch.inference_mode():
        return dict(zip(NAMES, pipeline.encode_prompt(
            prompt=prompts, negative_prompt=negatives, device=pipeline.device, num_images_per_prompt=1,
            do_classifier_free_guidance=True,
        )))


def image(engine, prompt, **fields):
    return engine.generate([request(prompt, seed=21, **fields)])[0].images[0]


def equal(first: dict, second: dict) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[name], second[name]) for name in first)


def test_a_200_token_prompt_is_encoded_whole_so_changing_its_last_words_changes_the_image(engine):
    assert engine.prompts.read(LONG).tokens == engine.prompts.read(LONG_OTHER_END).tokens == 200
    for pipeline in (engine.base, engine.refiner):
        truncated = [encode_prompt(pipeline, [text]) for text in (LONG, LONG_OTHER_END)]
        assert equal(*truncated)  # the old path never saw the last words
        whole = [encode(engine, pipeline, [text]) for text in (LONG, LONG_OTHER_END)]
        assert whole[0]["prompt_embeds"].shape[1] == 3 * CHUNK  # 200 tokens split at sentence ends: 68 + 68 + 64
        assert torch.equal(whole[0]["prompt_embeds"][:, :CHUNK], whole[1]["prompt_embeds"][:, :CHUNK])
        assert not torch.equal(whole[0]["prompt_embeds"][:, 2 * CHUNK:], whole[1]["prompt_embeds"][:, 2 * CHUNK:])
        # The pooled embedding is one vector, of the first 75 tokens, as in SDXL: the same for both.
        assert torch.equal(whole[0]["pooled_prompt_embeds"], truncated[0]["pooled_prompt_embeds"])
    assert pixels(image(engine, LONG)).tolist() != pixels(image(engine, LONG_OTHER_END)).tolist()


@pytest.mark.parametrize("prompts", [["a cat napping"], ["a red fox", "a lighthouse at dusk"]], ids=["one", "two"])
@pytest.mark.parametrize("negatives", [None, "blurry, low quality"], ids=["no-negative", "negative"])
@pytest.mark.parametrize("expert", ["base", "refiner"])
def test_a_short_plain_prompt_is_embedded_exactly_as_encode_prompt_embeds_it(engine, prompts, negatives, expert):
    """Exactly: such a batch goes to encode_prompt itself. compel's own path gives the same bits for one
    prompt here (the same token ids through the same encoders at the same batch size); on a GPU a batch's
    size can move the last bit, which is why the engine keeps encode_prompt for these prompts."""
    pipeline = getattr(engine, expert)
    negatives = [negatives] * len(prompts) if negatives else None
    assert equal(encode(engine, pipeline, prompts, negatives), encode_prompt(pipeline, prompts, negatives))
    one = prompts[:1], negatives[:1] if negatives else None
    assert equal(engine.prompts.encode_with_compel(pipeline, *one, True), encode_prompt(pipeline, *one))


@pytest.mark.slow  # many denoising steps: seconds, not the fast subset's milliseconds
def test_weighting_syntax_changes_the_image_and_a_weight_of_one_changes_nothing(engine):
    plain = image(engine, "a cat napping")
    for weighted in ("a (cat)1.5 napping", "a cat++ napping", "a cat-- napping", "a (cat)0.5 napping"):
        assert pixels(image(engine, weighted)).tolist() != pixels(plain).tolist(), weighted
    for neutral in ("a (cat)1.0 napping", "a (cat) napping", "(a cat napping)1", '"a cat" napping'):
        assert image(engine, neutral).tobytes() == plain.tobytes(), neutral
        for pipeline in (engine.base, engine.refiner):  # and through compel itself
            assert equal(engine.prompts.encode_with_compel(pipeline, [neutral], None, True),
                         engine.prompts.encode_with_compel(pipeline, ["a cat napping"], None, True))
    # An upweighted word moves its own token's embeddings only: "a" is token 1 after the start token, "cat" 2.
    up, same = (encode(engine, engine.base, [text])["prompt_embeds"] for text in ("a (cat)1.5 napping",
                                                                                   "a cat napping"))
    assert (up != same).any(dim=-1)[0].nonzero().flatten().tolist() == [2]


def test_a_long_negative_prompt_with_a_short_prompt_pads_the_prompt_to_its_length_and_back(engine):
    for pipeline in (engine.base, engine.refiner):
        short, empty = (encode_prompt(pipeline, [text])["prompt_embeds"] for text in ("a cat napping", ""))
        embeds = encode(engine, pipeline, ["a cat napping"], [LONG])
        assert embeds["prompt_embeds"].shape == embeds["negative_prompt_embeds"].shape == (1, 3 * CHUNK, short.shape[2])
        # The prompt's own chunk, then compel's padding: its encoding of "", a chunk at a time.
        assert torch.equal(embeds["prompt_embeds"], torch.cat([short, empty, empty], dim=1))
        assert torch.equal(embeds["negative_prompt_embeds"], encode(engine, pipeline, [LONG])["prompt_embeds"])
        # A long prompt with a short negative: the negative is padded.
        embeds = encode(engine, pipeline, [LONG], ["a cat napping"])
        assert torch.equal(embeds["negative_prompt_embeds"], torch.cat([short, empty, empty], dim=1))
    # Without a negative prompt, zeros of the long prompt's length for the base, "" for the refiner.
    embeds = encode(engine, engine.base, [LONG])
    assert torch.equal(embeds["negative_prompt_embeds"], torch.zeros_like(embeds["prompt_embeds"]))
    assert torch.equal(embeds["negative_pooled_prompt_embeds"], torch.zeros_like(embeds["pooled_prompt_embeds"]))
    empty = encode_prompt(engine.refiner, [""])
    embeds = encode(engine, engine.refiner, [LONG])
    assert torch.equal(embeds["negative_prompt_embeds"], torch.cat([empty["prompt_embeds"]] * 3, dim=1))
    assert torch.equal(embeds["negative_pooled_prompt_embeds"], empty["pooled_prompt_embeds"])
    long_negative = engine.generate([request("a cat napping", seed=5, negative_prompt=LONG)])[0]
    short_negative = engine.generate([request("a cat napping", seed=5, negative_prompt="blurry")])[0]
    assert pixels(long_negative.images[0]).tolist() != pixels(short_negative.images[0]).tolist()


def test_compels_padding_follows_the_text_encoder_as_it_is_now(engine):
    """An adapter can train the text encoders, and compel caches its encoding of "", which pads and weights."""
    encode(engine, engine.refiner, [LONG], ["a cat napping"])  # compel's "" of the encoder as loaded
    weight = engine.refiner.text_encoder_2.text_model.embeddings.token_embedding.weight
    with torch.no_grad():
        saved = weight.clone()
        weight.mul_(1.5)
    try:
        empty = encode_prompt(engine.refiner, [""])["prompt_embeds"]
        padded = encode(engine, engine.refiner, [LONG], ["a cat napping"])["negative_prompt_embeds"]
        assert torch.equal(padded[:, CHUNK:], torch.cat([empty, empty], dim=1))
    finally:
        with torch.no_grad():
            weight.copy_(saved)


def test_token_counts_are_in_the_generation_and_in_usage(engine):
    requests = [request(LONG, seed=1, negative_prompt="blurry, low quality", steps=1, refiner=False),
                request("a (cat)1.3 napping++", seed=1, steps=1, refiner=False, n=2)]
    generations = engine.generate(requests)
    assert generations[0].tokens == {"prompt": 200, "negative-prompt": 4}  # blurry , low quality
    assert generations[1].tokens == {"prompt": 3, "negative-prompt": 0}  # weighting syntax is not a token
    assert usage(requests[0], generations[0])["tokens"] == {"prompt": 200, "negative-prompt": 4}


@pytest.mark.parametrize("prompt, negative", [
    (LONG, ""), (LONG, LONG_OTHER_END), ("a cat napping", LONG), ("a (cat)1.5 (napping)0.5", "(blurry)1.4"),
    ("a cat+++ napping---", ""), ("a (cat)0 napping", ""), ("(a cat)2.0 napping", ""),
    ('("a cat", "a dog").blend(0.7, 0.3)', ""), ('("a cat", "a dog").and()', ""), ("a cat.swap(dog)", ""),
    ("withLora(style, 0.5) a cat", ""), ("withLora(style)", ""), ("C++ code, well-lit \\(literal\\)", ""),
    ("(" * 60 + "cat", ""), ("(" * 8 + "cat" + ")" * 8, ""), (LONG.replace(" a ", " (a)1.2 ") * 3, ""),
], ids=["long", "long-both", "long-negative", "weights", "plus-minus", "weight-0", "weight-2", "blend", "and",
        "swap", "lora-term", "lora-only", "escapes", "deep-nesting", "nesting-8", "long-weighted"])
@pytest.mark.slow  # many denoising steps: seconds, not the fast subset's milliseconds
def test_every_image_stays_finite(engine, prompt, negative):
    for pipeline in (engine.base, engine.refiner):
        embeds = encode(engine, pipeline, [prompt, "a cat napping"], [negative] * 2 if negative else None)
        assert all(torch.isfinite(tensor).all() for tensor in embeds.values())
    generation = engine.generate([request(prompt, seed=2, negative_prompt=negative),
                                  request("a cat napping", seed=3, negative_prompt=negative)])
    for result in generation:  # a short prompt in the same batch as a long one: padded to its length
        assert result.events["nan_redecodes"] == 0 and len(result.images) == 1
        assert pixels(result.images[0]).std() > 0  # a NaN image would decode to one flat color


class _Everything(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines = []

    def emit(self, record):
        self.lines.append(self.format(record))


@pytest.fixture
def every_log_line():
    """Every logger at DEBUG, those that do not propagate (transformers, diffusers) included."""
    handler = _Everything()
    loggers = [logging.getLogger()] + [logger for logger in logging.root.manager.loggerDict.values()
                                       if isinstance(logger, logging.Logger)]
    saved = [(logger, logger.level) for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
        logger.addHandler(handler)
    try:
        yield handler.lines
    finally:
        for logger, level in saved:
            logger.setLevel(level)
            logger.removeHandler(handler)


@pytest.fixture
def default_recursion_limit():
    """Python's default, where 60 nested parentheses exceed compel's parser: inductor, once it has compiled in this
    process (an earlier test), raises the limit to 2000, and then they parse."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    yield
    sys.setrecursionlimit(limit)


def test_no_prompt_reaches_a_log_line_or_an_error_at_any_level(engine, every_log_line, capfd, monkeypatch,
                                                                default_recursion_limit):
    secret = " ".join(f"secretword{i}" for i in range(40))
    prompts = [f"(secretword)1.3 {secret} word--", "(" * 60 + "secretword", f"{secret} {secret}"]
    engine.generate([request(prompt, seed=4, negative_prompt=f"secretword-- {secret}") for prompt in prompts])
    # compel's own errors quote the prompt: only their type is kept.
    failing = Compel.build_conditioning_tensor_for_conjunction

    def fails_on_weights(compel, conjunction, **options):
        prompt = conjunction.prompts[0]
        if isinstance(prompt, FlattenedPrompt) and any(fragment.weight != 1 for fragment in prompt.children):
            raise RuntimeError(f"token sequence mismatch for fragment {conjunction!r}")
        return failing(compel, conjunction, **options)

    def fails(compel, conjunction, **options):
        raise RuntimeError(f"couldn't find start of token sequence for fragment {conjunction!r}")

    monkeypatch.setattr(Compel, "build_conditioning_tensor_for_conjunction", fails_on_weights)
    engine.generate([request(f"(secretword)1.3 {secret}", seed=4, steps=1, refiner=False)])  # falls back
    monkeypatch.setattr(Compel, "build_conditioning_tensor_for_conjunction", fails)
    with pytest.raises(PromptError) as failure:
        engine.generate([request(f"{secret} {secret}", seed=4, steps=1, refiner=False)])
    assert "secretword" not in str(failure.value)
    assert failure.value.__context__ is None and failure.value.__cause__ is None  # no chained compel error
    output = capfd.readouterr()
    lines = "\n".join(every_log_line)
    assert "compel failed on the syntax of a prompt (RuntimeError)" in lines  # it did log, without the prompt
    assert "compel cannot parse a prompt (RecursionError)" in lines
    assert "secretword" not in lines + output.out + output.err


texts = st.lists(st.sampled_from(list("ab1 ,.=+-:!?'\t)\u00e9") + ["cat", "well-lit", "C"]), max_size=30).map("".join)


@settings(max_examples=300, deadline=None)
@given(texts)
def test_a_text_without_syntax_characters_reads_as_compel_would_read_it(engine, text):
    """What lets prompts.py skip compel's parser (0.3 ms a character) for such texts: compel reads the same
    words, unweighted, except that it puts a space after each comma."""
    if _SYNTAX.search(text):
        return
    (prompt,) = PromptParser().parse_conjunction(text).prompts
    assert all(fragment.weight == 1 for fragment in prompt.children)
    tokenizer = engine.base.tokenizer_2
    spaced = re.sub(r",(\S)", r", \1", text)
    assert tokenizer(" ".join(fragment.text for fragment in prompt.children)).input_ids == tokenizer(spaced).input_ids


@pytest.mark.slow  # many denoising steps: seconds, not the fast subset's milliseconds
def test_short_and_long_prompts_in_one_call_each_give_their_solo_image(engine):
    """A batch is padded to its longest text, so prompts of other lengths or encoders never share one."""
    batch = [request("a cat napping", seed=5), request(LONG, seed=5), request("a (cat)1.3 napping", seed=5),
             request("a cat napping", seed=6, negative_prompt=LONG)]
    together = engine.generate(batch)
    for req, generation in zip(batch, together):
        assert generation.images[0].tobytes() == engine.generate([req])[0].images[0].tobytes()
