"""The review order for adapting a model: least confident first, called classes in turn."""

from __future__ import annotations

import numpy as np

from lgld.runtime.review.order import margins, review_order


def test_classes_take_turns_and_the_least_confident_comes_first():
    probs = [
        [0.9, 0.1, 0.0],   # 0: class 0, margin 0.8
        [0.5, 0.45, 0.05],  # 1: class 0, margin 0.05
        [0.7, 0.3, 0.0],   # 2: class 0, margin 0.4
        [0.2, 0.7, 0.1],   # 3: class 1, margin 0.5
        [0.35, 0.4, 0.25],  # 4: class 1, margin 0.05
        [0.1, 0.1, 0.8],   # 5: class 2, margin 0.7
    ]
    assert review_order(probs) == [1, 4, 5, 2, 3, 0]
    assert np.allclose(margins(np.asarray(probs))[:2], [0.8, 0.05])
    assert review_order([]) == []


def test_every_cell_appears_once_whatever_the_mix():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(5) * 0.3, 200)
    order = review_order(p)
    assert sorted(order) == list(range(200))
    first = p[order[:10]].argmax(axis=1)
    assert len(set(first.tolist())) == len(set(p.argmax(axis=1).tolist()))  # all called classes


def test_the_page_gallery_lists_unreviewed_cells_in_review_order(tmp_path):
    from review_logs import LogBuilder

    from lgld.runtime.core.countlog import read_log
    from lgld.runtime.review.live import gallery

    b = LogBuilder(tmp_path)
    b.start()
    for _ in range(12):
        b.cell()
    b.write()
    log = read_log(b.path)
    session = log.get()
    g = gallery(log, session)
    tracks = [c.track for c in session.cells]
    classes = session.classes()
    probs = [[c.probs.get(k, 0.0) for k in classes] for c in session.cells]
    assert g["review_first"] == [tracks[i] for i in review_order(probs)]
    assert len(g["review_first"]) == 12
    b.review(tracks[0], "confirm")
    b.write()
    log = read_log(b.path)
    assert tracks[0] not in gallery(log, log.get())["review_first"]  # reviewed: not listed
