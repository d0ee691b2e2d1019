"""The natural-wonders dataset, its held-out split and the fact metric."""
from fastattn.tasks.natural_wonders.task import FIELDS, all_wonders, fact_scores, wonder_splits
from fastattn.tasks.natural_wonders.wonders import CONTINENTS


def test_dataset():
    ws = all_wonders()
    assert len(ws) >= 60 and len({w.name for w in ws}) == len(ws)
    for w in ws:
        assert w.continent in CONTINENTS and w.country and w.kind and any(c.isdigit() for c in w.fact)
        assert w.sentences.count(".") >= 2
        assert w.description.startswith(" A") and w.description.endswith("\n")
        assert len((w.prompt + w.description).encode()) <= 256  # the tiny preset's max_seq_len


def test_held_out_split():
    train, held = wonder_splits(seed=0)
    assert not {w.name for w in train} & {w.name for w in held}
    assert len(train) + len(held) == len(all_wonders()) and len(held) >= 10
    assert {w.kind for w in held} <= {w.kind for w in train}  # every held-out kind is taught
    assert wonder_splits(seed=0) == (train, held) and wonder_splits(seed=1) != (train, held)


def test_fact_scores():
    w = next(x for x in all_wonders() if x.name == "Victoria Falls")
    assert fact_scores(w.description, w) == {f: True for f in FIELDS}
    assert fact_scores(" A lake in Canada, North America. It is 8 m deep.", w) == \
        {"country": False, "continent": False, "kind": False}
    # The first country named counts; a later right one does not rescue it.
    assert fact_scores(" A waterfall in Iceland, Africa, near Zambia.", w) == \
        {"country": False, "continent": True, "kind": True}
    assert fact_scores("", w) == {f: False for f in FIELDS}
