"""A stand-in analysis result for page tests: anything with tables(), images() and summary() is
what Store.save wants."""


class FakeResult:
    def __init__(self, tables, summary, images=None):
        self._t, self._s, self._i = tables, summary, images or {}

    def tables(self):
        return self._t

    def images(self):
        return self._i

    def summary(self):
        return self._s


def columns(rows):
    """Row dicts -> a table of columns (the store's layout)."""
    return {k: [r[k] for r in rows] for k in rows[0]}
