"""``python -m mil.review AUDIT_DIR --rater NAME``: the expert audit as a local browser app.

One cell at a time, large, with its neighbours on the slide; keys ``b`` blast, ``n`` non-blast,
``u`` unsure, ``x`` not a usable cell, ``z`` undo, arrows to move; a gallery of one's answers
per class where a click changes an answer. Blinded (no call, no probability; an order of its
own per rater); every answer is written at once to ``AUDIT_DIR/raters/NAME.csv``.
"""
