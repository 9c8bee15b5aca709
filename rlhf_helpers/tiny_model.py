"""Build the offline ``tiny`` preset: a T5-style tokenizer and a small Flan-T5-shaped model,
pretrained locally with T5's span-corruption objective on the course corpus.

Why not a random model? LoRA adapts a *pretrained* base; a random base would teach the wrong
lesson (LoRA would have to learn everything through rank-8 updates). Why not download Flan-T5?
These machines cannot reach a model hub, and a course must run on a laptop CPU in minutes.
So we rebuild the two ingredients of Flan-T5 in miniature:

1. the tokenizer: a unigram (sentencepiece-style) model trained with ``tokenizers`` and wrapped in
   transformers' own ``T5Tokenizer`` (pad=0, eos=1, unk=2, then ``<extra_id_99>`` .. ``<extra_id_0>``
   at the end of the vocabulary, exactly as in Flan-T5);
2. the model: ``T5ForConditionalGeneration`` with Flan-T5's choices (gated-GELU feed-forward,
   relative position buckets), pretrained by span corruption (Raffel et al. 2020, sec. 3.1.4).
   Note: we ask for an untied LM head like Flan-T5's, but transformers 5 ties T5's head to the
   input embeddings when it builds the model, so the tiny model's head is tied.

Everything is deterministic given the seed and cached under ``RLHF_CACHE``. The build runs on a
fixed number of CPU threads (``BUILD_THREADS``): float sums depend on how the work is split, so a
build on one thread (``torchrun`` sets ``OMP_NUM_THREADS=1``) would otherwise give other weights.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from rlhf_helpers.config import cache_dir, fast_cpu_math
from rlhf_helpers.io_utils import atomic_write_dir, atomic_write_json

#: Bump when the build recipe changes so stale caches are not reused.
BUILD_VERSION = 3
N_SENTINELS = 100
#: CPU threads of every build, whatever the machine has: the same seed gives the same weights.
BUILD_THREADS = 2


@dataclass(frozen=True)
class TinyRecipe:
    """Everything that determines the tiny model's weights (it is hashed into the cache key)."""

    seed: int = 0
    vocab_size: int = 2000  # target size of the trained unigram vocabulary, before sentinels
    d_model: int = 128
    d_kv: int = 32
    num_heads: int = 4
    d_ff: int = 384
    num_layers: int = 3
    num_decoder_layers: int = 3
    pretrain_steps: int = 500
    batch_size: int = 24
    learning_rate: float = 3e-3
    max_length: int = 128  # tokens per pretraining document
    noise_density: float = 0.15  # T5 defaults
    mean_span_length: float = 3.0


#: Long-input policy of the base build. The tokenizer learns from the first ``CORPUS_CHARS`` characters of
#: every prompt and reply (enough text for its vocabulary, in seconds). A pretraining document is the first
#: ``PROMPT_CHARS`` characters of the prompt and the reply (cut at a word boundary): the model reads at most
#: ``max_length`` tokens of it, and a 3,400-character news article would otherwise fill them all and hide the
#: reply. Every course text is shorter than these limits (prompts 173, replies 418 characters at most), so
#: the course's base is unchanged.
CORPUS_CHARS = 2000
PROMPT_CHARS = 200
#: At most this many (prompt, reply) documents, the first ones in file order (the course has 4,326).
MAX_DOCUMENTS = 5000


def clip_text(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, at the last whitespace before the limit if there is one."""
    if len(text) <= limit:
        return text
    cut = text[:limit]
    space = cut.rfind(" ")
    return cut[:space] if space > limit // 2 else cut


#: The recipe on a learner's own data: fewer, shorter documents per step (16 x 96 tokens instead of 24 x 128)
#: and 300 steps, under half of the course build's compute, because real corpora have long documents
#: (a build of the course recipe on CNN/DM + DialogSum took 19 minutes on a busy 2-core machine). The
#: course's own build keeps :class:`TinyRecipe`'s defaults, so its base stays bit-identical.
CUSTOM_RECIPE = TinyRecipe(pretrain_steps=300, batch_size=16, max_length=96)


def recipe_for_data() -> TinyRecipe:
    """The build recipe for the current data folder: the course's, or :data:`CUSTOM_RECIPE` on custom data
    (env ``RLHF_TINY_STEPS`` sets its step count there; the course's recipe never changes). Either way the
    cache key hashes the recipe and the corpus, so a course base and a custom base never collide."""
    import os
    from dataclasses import replace

    from rlhf_helpers.config import on_course_data

    if on_course_data():
        return TinyRecipe()
    steps = os.environ.get("RLHF_TINY_STEPS")  # tests build a custom base in seconds; part of the cache key
    return replace(CUSTOM_RECIPE, pretrain_steps=int(steps)) if steps else CUSTOM_RECIPE


def _training_rows(folder: Path | None = None) -> list[tuple[str, str]]:
    """(prompt, reply) pairs of the training-side files only (SFT and preferences, in any accepted format):
    evaluation references never leak into the base model. Texts are clipped to :data:`CORPUS_CHARS`, and at
    most :data:`MAX_DOCUMENTS` pairs are kept."""
    from rlhf_helpers.data_loading import DataValidationError, validate_rows
    from rlhf_helpers.data_prep import find_data_files

    files = find_data_files(folder)
    pairs: list[tuple[str, str]] = []
    for kind, replies in (("sft", ("response",)), ("preferences", ("chosen", "rejected"))):
        report, rows = validate_rows(files[kind], kind)
        if not report.ok:
            raise DataValidationError(report)
        for row in rows:
            prompt = clip_text(row["prompt"], CORPUS_CHARS)
            pairs += [(prompt, clip_text(row[name], CORPUS_CHARS)) for name in replies]
    return list(dict.fromkeys(pairs))[:MAX_DOCUMENTS]  # de-duplicate, keep order (deterministic)


def corpus_texts(folder: Path | None = None) -> list[str]:
    """Every distinct prompt and reply: the tokenizer's training corpus."""
    return list(dict.fromkeys(t for pair in _training_rows(folder) for t in pair))


def pretraining_documents(folder: Path | None = None) -> list[str]:
    """Ticket and reply joined into one document. Span corruption on such documents often hides
    a name or an order number of the reply that the ticket still shows, so the model learns to
    copy facts through attention, as web-scale pretraining teaches Flan-T5. Long prompts keep their first
    :data:`PROMPT_CHARS` characters, so the reply still fits in the ``max_length`` tokens the model reads."""
    return [f"{clip_text(prompt, PROMPT_CHARS)} {reply}" for prompt, reply in _training_rows(folder)]


def _is_clean_piece(piece: str) -> bool:
    body = piece[1:] if piece.startswith("▁") else piece
    return body == "" or body.replace("'", "").isalpha() or len(body) == 1


def _unigram_pieces(texts: list[str], vocab_size: int) -> list[tuple[str, float]]:
    """Unigram pieces with log-probability scores, trained with ``tokenizers``.

    The trainer seeds its vocabulary with substrings repeated across *distinct* words, so on a
    corpus with a small, very frequent vocabulary (like ours) it never proposes common whole words
    such as ``▁water`` and spells them in pieces. We add every frequent word as a candidate and run
    one Viterbi re-estimation (the final step of sentencepiece's training): tokenise the corpus
    with the candidate vocabulary, count pieces, score each as log(count / total).
    """
    from collections import Counter

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    def t5_pre_tokenizer():
        # The pre-tokenisation T5Tokenizer applies, so pieces match at use time.
        return pre_tokenizers.Sequence(
            [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
        )

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = t5_pre_tokenizer()
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"
    )
    tok.train_from_iterator(texts, trainer=trainer)
    specials = {"<pad>", "</s>", "<unk>"}
    candidates = {p: s for p, s in json.loads(tok.to_str())["model"]["vocab"] if p not in specials}
    word_counts = Counter("▁" + w for t in texts for w in re.findall(r"[A-Za-z']+", t))
    for word, count in word_counts.most_common(vocab_size):
        if count >= 3:
            candidates.setdefault(word, math.log(count / sum(word_counts.values())))
    # Pieces are letters only, or one digit, or one symbol: "Sofia." must not be a token of its own,
    # or copying the name from "Customer: Sofia." into "Hi Sofia," would need two different tokens.
    # Numbers are spelled digit by digit, so the model can copy any order number or amount.
    candidates = {p: s for p, s in candidates.items() if _is_clean_piece(p)}
    for ch in sorted({c for t in texts for c in t if not c.isspace()} | set("0123456789")):
        candidates.setdefault(ch, -20.0)  # full character coverage: no <unk> on the course data

    viterbi = Tokenizer(models.Unigram([("<unk>", 0.0)] + sorted(candidates.items()), unk_id=0))
    viterbi.pre_tokenizer = t5_pre_tokenizer()
    counts = Counter(p for enc in viterbi.encode_batch(texts) for p in enc.tokens)
    total = sum(counts.values())
    rescored = [(p, math.log(counts[p] / total)) for p in candidates if counts[p] > 0]
    rare = [(p, -20.0) for p in candidates if counts[p] == 0 and len(p.lstrip("▁")) <= 1]
    return sorted(rescored, key=lambda x: -x[1]) + sorted(rare)


def train_tokenizer(texts: list[str], vocab_size: int):
    """A transformers ``T5Tokenizer`` over unigram pieces learnt from ``texts``, laid out like
    Flan-T5's: pad=0, eos=1, unk=2, the pieces, then ``<extra_id_99>`` .. ``<extra_id_0>``."""
    from transformers import T5Tokenizer

    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    sentinels = [(f"<extra_id_{i}>", 0.0) for i in range(N_SENTINELS - 1, -1, -1)]
    tokenizer = T5Tokenizer(vocab=specials + _unigram_pieces(texts, vocab_size) + sentinels, extra_ids=N_SENTINELS)
    tokenizer.model_max_length = 512
    return tokenizer


def tiny_config(recipe: TinyRecipe, vocab_size: int):
    """A T5Config with Flan-T5's architecture choices at a laptop-friendly size."""
    from transformers import T5Config

    return T5Config(
        vocab_size=vocab_size,
        d_model=recipe.d_model,
        d_kv=recipe.d_kv,
        num_heads=recipe.num_heads,
        d_ff=recipe.d_ff,
        num_layers=recipe.num_layers,
        num_decoder_layers=recipe.num_decoder_layers,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        dropout_rate=0.0,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )


def random_spans_noise_mask(length: int, noise_density: float, mean_span_length: float, rng: np.random.Generator):
    """Boolean mask of the tokens to corrupt, as in T5's ``random_spans_noise_mask``.

    Noise and non-noise runs alternate, starting with non-noise; the number of spans is
    ``round(noise_tokens / mean_span_length)`` and span lengths are a random partition.
    """
    num_noise = int(round(length * noise_density))
    num_noise = min(max(num_noise, 1), length - 1)
    num_spans = max(int(round(num_noise / mean_span_length)), 1)
    num_nonnoise = length - num_noise

    def random_segmentation(num_items: int, num_segments: int) -> np.ndarray:
        first_in_segment = np.zeros(num_items, dtype=np.int64)
        first_in_segment[rng.permutation(num_items - 1)[: num_segments - 1] + 1] = 1
        segment_id = np.cumsum(first_in_segment)
        return np.bincount(segment_id, minlength=num_segments)

    noise_lengths = random_segmentation(num_noise, num_spans)
    nonnoise_lengths = random_segmentation(num_nonnoise, num_spans)
    interleaved = np.stack([nonnoise_lengths, noise_lengths], axis=1).reshape(-1)
    span_starts = np.cumsum(interleaved)[:-1]
    span_start_indicator = np.zeros(length, dtype=np.int64)
    span_start_indicator[span_starts] = 1
    span_num = np.cumsum(span_start_indicator)
    return span_num % 2 == 1


def span_corrupt(ids: list[int], sentinel_ids: list[int], recipe: TinyRecipe, rng: np.random.Generator):
    """Turn token ids into a (input, target) pair: each noise span becomes one sentinel in the
    input, and the target lists each sentinel followed by the tokens it hides, then EOS."""
    mask = random_spans_noise_mask(len(ids), recipe.noise_density, recipe.mean_span_length, rng)
    inputs, targets, span = [], [], -1
    prev = False
    for tok, noisy in zip(ids, mask, strict=False):
        if noisy:
            if not prev:
                span += 1
                inputs.append(sentinel_ids[span])
                targets.append(sentinel_ids[span])
            targets.append(tok)
        else:
            inputs.append(tok)
        prev = noisy
    targets.append(sentinel_ids[span + 1])
    return inputs + [1], targets + [1]


def _pad(batch: list[list[int]], value: int):
    import torch

    width = max(len(x) for x in batch)
    return torch.tensor([x + [value] * (width - len(x)) for x in batch])


def warmup_cosine(total_steps: int):
    """The learning-rate multiplier of both tiny bases' pretraining: linear warm-up over the first 5% of the steps,
    then a cosine decay to 0 (a short run needs the warm-up against early instability and the decay to settle)."""
    warmup = max(total_steps // 20, 1)

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total_steps - warmup, 1)))

    return multiplier


def pretrain(model, tokenizer, texts: list[str], recipe: TinyRecipe, progress: bool = True) -> list[float]:
    """Span-corruption pretraining with AdamW and a cosine schedule; returns the loss curve."""
    import torch
    from tqdm.auto import tqdm

    rng = np.random.default_rng(recipe.seed)
    encoded = [ids[: recipe.max_length - 1] for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    encoded = [ids for ids in encoded if len(ids) >= 4]
    sentinel_ids = tokenizer.convert_tokens_to_ids([f"<extra_id_{i}>" for i in range(N_SENTINELS)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(recipe.pretrain_steps))
    model.train()
    losses: list[float] = []
    bar = tqdm(range(recipe.pretrain_steps), desc="pretrain tiny T5 (span corruption)", disable=not progress)
    for _ in bar:
        picks = rng.integers(0, len(encoded), recipe.batch_size)
        pairs = [span_corrupt(encoded[i], sentinel_ids, recipe, rng) for i in picks]
        input_ids = _pad([p[0] for p in pairs], 0)
        labels = _pad([p[1] for p in pairs], -100)
        loss = model(input_ids=input_ids, attention_mask=(input_ids != 0).long(), labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if len(losses) % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    model.eval()
    return losses


def recipe_key(recipe: TinyRecipe, texts: list[str]) -> str:
    h = hashlib.sha256(json.dumps({"recipe": asdict(recipe), "v": BUILD_VERSION}, sort_keys=True).encode())
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()[:12]


def build_tiny(out_dir: Path, recipe: TinyRecipe | None = None, progress: bool = True) -> dict:
    """Build tokenizer + pretrained model into ``out_dir`` (atomically) and return build info."""
    import torch
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    recipe = recipe or recipe_for_data()
    t0 = time.perf_counter()
    fast_cpu_math()
    threads = torch.get_num_threads()
    torch.set_num_threads(BUILD_THREADS)
    try:
        torch.manual_seed(recipe.seed)
        tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir(recipe))
        model = T5ForConditionalGeneration(tiny_config(recipe, len(tokenizer)))
        # T5 initialises the embedding/LM-head matrix with std 1.0, which starts training at a loss
        # near 20; scaling it by d_model ** -0.5 saves a third of our short pretraining budget.
        with torch.no_grad():
            model.lm_head.weight.mul_(recipe.d_model**-0.5)
        losses = pretrain(model, tokenizer, pretraining_documents(), recipe, progress=progress)
    finally:
        torch.set_num_threads(threads)
    info = {
        "recipe": asdict(recipe),
        "build_version": BUILD_VERSION,
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "build_seconds": round(time.perf_counter() - t0, 1),
        "pretrain_loss_first": float(np.mean(losses[:20])),
        "pretrain_loss_last": float(np.mean(losses[-20:])),
        "pretrain_losses": [round(x, 4) for x in losses],
    }

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / "build_info.json", info)

    atomic_write_dir(out_dir, write, keep_existing=True)
    return info


def tiny_tokenizer_dir(recipe: TinyRecipe | None = None) -> Path:
    """Path of the cached tiny tokenizer alone (about 2 s to build): enough for data validation."""
    recipe = recipe or recipe_for_data()
    texts = corpus_texts()
    target = cache_dir() / f"tiny-tokenizer-{recipe_key(recipe, texts)}"
    if not (target / "tokenizer_config.json").exists():
        atomic_write_dir(target, lambda tmp: train_tokenizer(texts, recipe.vocab_size).save_pretrained(tmp),
                         keep_existing=True)
    return target


def tiny_model_dir(recipe: TinyRecipe | None = None, progress: bool = True) -> Path:
    """Path of the cached tiny preset, building it first if needed (about a minute on 2 CPU cores)."""
    recipe = recipe or recipe_for_data()
    texts = corpus_texts()
    target = cache_dir() / f"tiny-{recipe_key(recipe, texts)}"
    if not (target / "build_info.json").exists():
        build_tiny(target, recipe, progress=progress)
    return target


def unigram_loss(tokenizer, documents: list[str], max_length: int = TinyRecipe.max_length) -> float:
    """Cross-entropy, in nats per token, of the best context-free guess: the entropy of the token
    frequencies of ``documents`` (as pretraining reads them, at most ``max_length - 1`` tokens each).

    Why this baseline? A model that learnt nothing from the context can at best predict each hidden token by
    how common it is, so its span-corruption loss stays near this number on any corpus; a model whose loss
    falls clearly below it uses the surrounding text. (The loss of the first steps is no fixed target: it
    depends on the vocabulary's size and the initialisation, not on what the model can learn.)
    """
    from collections import Counter

    counts: Counter = Counter()
    for ids in tokenizer(documents, add_special_tokens=False)["input_ids"]:
        counts.update(ids[: max_length - 1])
    total = sum(counts.values())
    p = np.array([c / total for c in counts.values()])
    return float(-(p * np.log(p)).sum())


def pretraining_problems(info: dict, unigram: float, margin: float = 0.5) -> list[str]:
    """What is wrong with a build's pretraining, as sentences (an empty list: it learnt). Holds on any data:
    the final loss (mean of the last 20 steps) must fall below 80% of the first steps' loss and at least
    ``margin`` nats below the context-free :func:`unigram_loss` of the same corpus."""
    first, last = info["pretrain_loss_first"], info["pretrain_loss_last"]
    problems = []
    if not np.isfinite(last):
        problems.append(f"the pretraining loss is not finite ({last})")
    if not last < 0.8 * first:
        problems.append(f"the loss barely fell: {first:.2f} -> {last:.2f} (needs < {0.8 * first:.2f})")
    if not last < unigram - margin:
        problems.append(
            f"the final loss {last:.2f} is not {margin} nats below the context-free (unigram) loss {unigram:.2f}: "
            "the model does not use the context"
        )
    return problems


def build_info(model_dir: str | Path) -> dict:
    """The ``build_info.json`` written next to a built tiny model (size, time, loss curve)."""
    return json.loads((Path(model_dir) / "build_info.json").read_text())


def demo_sentence(folder: Path | None = None, max_chars: int = 160) -> str:
    """A sentence from the data actually loaded, for notebook 00's demonstrations: the start of the first
    SFT reply (whole sentences while they fit in ``max_chars``, else the first ``max_chars`` characters at a
    word boundary), with runs of whitespace collapsed to one space, as T5's tokenizer does anyway."""
    reply = " ".join(_training_rows(folder)[0][1].split())
    text = ""
    for sentence in re.split(r"(?<=[.!?])\s+", reply):
        if text and len(text) + 1 + len(sentence) > max_chars:
            break
        text = f"{text} {sentence}".strip()
    return clip_text(text, max_chars)


def span_corruption_example(tokenizer, text: str, seed: int = 0, recipe: TinyRecipe = TinyRecipe()) -> tuple[str, str]:
    """(corrupted input, target) for one text, decoded, to show what the model learnt to do."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    sentinel_ids = tokenizer.convert_tokens_to_ids([f"<extra_id_{i}>" for i in range(N_SENTINELS)])
    inputs, targets = span_corrupt(ids, sentinel_ids, recipe, np.random.default_rng(seed))
    return tokenizer.decode(inputs), tokenizer.decode(targets)
