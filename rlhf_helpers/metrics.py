"""Reference-based text metrics from well-kept libraries: ROUGE (``rouge_score``, the package
behind ``evaluate``'s rouge), BLEU (``sacrebleu``) and METEOR (``nltk``).

Why not ``evaluate.load("rouge")``? It fetches the metric's script from the hub at run time, which
fails offline; we call the same libraries it wraps.

METEOR needs the WordNet database for synonym matching. NLTK normally downloads it; offline we
build NLTK's ``corpora/wordnet`` folder in our cache from Debian's ``wordnet-base`` package (the
same WordNet 3.0 files, copied once) when that is installed. With neither available, METEOR is
reported as ``None`` and a message says how to get it — never a made-up number.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

from rlhf_helpers.config import cache_dir

DEBIAN_WORDNET = Path("/usr/share/wordnet")
# WordNet 3.0's lexicographer files (its ``lexnames`` file, which Debian's package lacks): the
# 45 names in their fixed order; NLTK reads the index of each synset's file from it.
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
_POS_NUMBER = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
_wordnet = None
METEOR_HELP = (
    "METEOR skipped: the WordNet data it needs is not installed. Offline on Debian/Ubuntu: "
    "`apt-get install wordnet-base`; online: `python -m nltk.downloader wordnet`."
)


def _wordnet_from_debian():
    """NLTK's wordnet folder assembled (symlinks) from Debian's WordNet 3.0 files, in our cache."""
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    root = cache_dir() / "nltk_data"
    folder = root / "corpora" / "wordnet"
    folder.mkdir(parents=True, exist_ok=True)
    for source in DEBIAN_WORDNET.iterdir():
        target = folder / source.name
        if source.is_file() and not target.exists():
            # Copies, not symlinks: NLTK refuses files that resolve outside its data path.
            shutil.copyfile(source, target.with_suffix(".part"))
            target.with_suffix(".part").rename(target)
    lexnames = "".join(f"{i:02d}\t{name}\t{_POS_NUMBER[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES))
    (folder / "lexnames").write_text(lexnames)
    (folder / "index.sense").touch()  # only used by lemma_from_key, which METEOR never calls
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))  # NLTK only reads corpora under its data path
    with warnings.catch_warnings():  # "multilingual functions are not available": not needed here
        warnings.simplefilter("ignore", UserWarning)
        return WordNetCorpusReader(str(folder), None)


def wordnet():
    """A loaded WordNet reader, or None when no WordNet data is available here."""
    global _wordnet
    if _wordnet is None:
        from nltk.corpus import wordnet as nltk_wordnet

        try:
            nltk_wordnet.ensure_loaded()
            _wordnet = nltk_wordnet
        except LookupError:
            if (DEBIAN_WORDNET / "data.noun").exists():
                _wordnet = _wordnet_from_debian()
    return _wordnet


def fetch_wordnet(download_dir: str | Path | None = None) -> tuple[bool, str]:
    """Make METEOR's WordNet data available, quietly: (True, where from) when it is already installed, comes
    from Debian's ``wordnet-base``, or ``nltk.download("wordnet")`` fetched it (into ``download_dir``, default
    NLTK's own); (False, why and how to get it) when none worked. Never raises: METEOR is then ``None``."""
    global _wordnet
    if wordnet() is not None:
        where = "NLTK's data" if _wordnet is _nltk_wordnet() else f"Debian's wordnet-base, {DEBIAN_WORDNET}"
        return True, f"METEOR: WordNet data found ({where})"
    import inspect
    import io

    import nltk

    errors = io.StringIO()
    options = {"quiet": True}
    if "print_error_to" in inspect.signature(nltk.download).parameters:
        options["print_error_to"] = errors  # NLTK prints failures even when quiet
    if download_dir is not None:
        Path(download_dir).mkdir(parents=True, exist_ok=True)
        options["download_dir"] = str(download_dir)
        if str(download_dir) not in nltk.data.path:
            nltk.data.path.insert(0, str(download_dir))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ok = nltk.download("wordnet", **options)
    except Exception as e:  # a network error NLTK does not catch itself
        ok, errors = False, io.StringIO(f"{type(e).__name__}: {e}")
    if ok:
        _wordnet = None
        if wordnet() is not None:
            return True, f"METEOR: WordNet data downloaded by NLTK{f' into {download_dir}' if download_dir else ''}"
    why = " ".join(line.replace("[nltk_data]", "").strip() for line in errors.getvalue().splitlines()).strip()
    return False, (
        f"METEOR's WordNet data could not be downloaded ({why or 'no network?'}): METEOR will be reported as None. "
        + METEOR_HELP.split("installed. ", 1)[1]
    )


def _nltk_wordnet():
    from nltk.corpus import wordnet as nltk_wordnet

    return nltk_wordnet


def rouge_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 (with stemming, as in ``evaluate``'s default)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for prediction, reference in zip(predictions, references):
        for name, score in scorer.score(reference, prediction).items():
            totals[name] += score.fmeasure
    return {name: total / max(len(predictions), 1) for name, total in totals.items()}


def bleu_score(predictions: list[str], references: list[str]) -> float:
    """Corpus BLEU from sacrebleu, scaled to [0, 1] like the ROUGE scores."""
    import sacrebleu

    return sacrebleu.corpus_bleu(predictions, [references]).score / 100


def meteor(predictions: list[str], references: list[str]) -> float | None:
    """Mean sentence METEOR from nltk, or None (with a warning) when WordNet is unavailable."""
    from nltk.tokenize import wordpunct_tokenize
    from nltk.translate.meteor_score import meteor_score

    reader = wordnet()
    if reader is None:
        warnings.warn(METEOR_HELP, stacklevel=2)
        return None
    scores = [
        meteor_score([wordpunct_tokenize(r.lower())], wordpunct_tokenize(p.lower()), wordnet=reader)
        for p, r in zip(predictions, references)
    ]
    return sum(scores) / max(len(scores), 1)


def text_metrics(predictions: list[str], references: list[str]) -> dict[str, float | None]:
    """ROUGE-1/2/L, BLEU and METEOR of ``predictions`` against ``references`` (all in [0, 1])."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    out: dict[str, float | None] = dict(rouge_scores(predictions, references))
    out["bleu"] = bleu_score(predictions, references)
    out["meteor"] = meteor(predictions, references)
    return out
