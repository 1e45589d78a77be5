"""The report draws each series with the style its records bring (strategy.json ``style``, carried by
the ranking rows), and a record without one in a neutral style."""

from mixprune.release import report


def _row(**keys):
    return {"family": "unstructured", "format": "fp32", "method": "mixmatch", "signal": "magnitude",
            "strategy": "min", "activation": None, **keys}


def test_a_series_takes_its_rows_style_and_a_row_without_one_is_neutral():
    styled = _row(style={"marker": "s", "color": "#d62728"})
    assert report._series(styled) == ("Mix-and-Match magnitude", "s", "#d62728")
    neutral = report.NEUTRAL_STYLE
    assert report._series(_row()) == ("Mix-and-Match magnitude", neutral["marker"], neutral["color"])
    assert report._series(_row(family="structured", method="baseline", signal="taylor", strategy="global",
                               style={"marker": "*", "color": "#e377c2"})) == \
        ("structured global TAYLOR baseline", "*", "#e377c2")
    assert report._series(_row(format="int8-dynamic", method="dense", activation="dynamic")) == \
        ("INT8, dynamic activations", neutral["marker"], neutral["color"])


def test_every_registered_piece_brings_a_style_of_its_own():
    from mixprune.exporter.quantize import RECIPES
    from mixprune.pruning.scores import BASELINES, SIGNALS, STRUCTURED_BASELINES

    styles = []
    for structured in (False, True):
        styles += [s.style.record(structured) for _, s in SIGNALS.items()]
        styles += [r.style.record(structured) for _, r in RECIPES.items()]
    styles += [b.style.record() for _, b in BASELINES.items()]
    styles += [b.style.record(True) for _, b in STRUCTURED_BASELINES.items()]
    assert len({tuple(s.items()) for s in styles}) == len(styles)
