import pytest

from rlhf_helpers import metrics


def test_identical_texts_score_one_and_unrelated_texts_score_low():
    refs = ["Hi Mia, your refund of $20 is on its way.", "The order is cancelled before shipping."]
    same = metrics.text_metrics(refs, refs)
    assert same["rouge1"] == same["rougeL"] == pytest.approx(1.0)
    assert same["bleu"] == pytest.approx(1.0)
    other = metrics.text_metrics(["purple elephants dance", "quantum soup"], refs)
    assert other["rougeL"] < 0.1 and other["bleu"] < 0.1


def test_rouge_matches_rouge_score_directly():
    from rouge_score import rouge_scorer

    pred, ref = "sorry your kettle arrived damaged", "I am sorry your red kettle arrived damaged"
    expected = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score(ref, pred)["rougeL"].fmeasure
    assert metrics.rouge_scores([pred], [ref])["rougeL"] == pytest.approx(expected)


@pytest.mark.skipif(not (metrics.DEBIAN_WORDNET / "data.noun").exists() and metrics.wordnet() is None,
                    reason="no WordNet data on this machine")
def test_meteor_uses_wordnet_synonyms():
    # "car" / "auto" only match through WordNet synonymy. (NLTK looks synonyms up after Porter
    # stemming, so a pair like "purchase"/"buy" does not match: "purchas" is not in WordNet.)
    with_syn = metrics.meteor(["the car is red"], ["the auto is red"])
    without = metrics.meteor(["the xyzzy is red"], ["the auto is red"])
    assert with_syn > without


def test_meteor_without_wordnet_is_none_with_an_explanation(monkeypatch):
    monkeypatch.setattr(metrics, "wordnet", lambda: None)
    with pytest.warns(UserWarning, match="wordnet-base"):
        assert metrics.meteor(["a"], ["a"]) is None


def test_mismatched_lengths_are_an_error():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        metrics.text_metrics(["a", "b"], ["a"])
