"""Model overview: every layer a forward pass meets, its output shape and parameter count."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class OverviewResult:
    model: dict  # Subject.describe()
    rows: dict[str, list]  # one row per layer

    def tables(self) -> dict[str, dict[str, list]]:
        return {"layers": self.rows}

    def images(self) -> dict:
        return {}

    def summary(self) -> dict:
        n_leaf = sum(self.rows["leaf"])
        return {"parameters": self.model["parameters"], "layers": len(self.rows["layer"]), "leaf_layers": n_leaf,
                "finding": f"{self.model['name']}: {n_leaf} layers, {self.model['parameters']:,} parameters, "
                           f"input {tuple(self.model['input_shape'])}, {self.model['task']}."}

    def text(self) -> str:
        """A plain-text table, as `neuronscope layers` prints it."""
        head = ("layer", "type", "output", "params")
        rows = [(("  " * r.count(".")) + r if not leaf else r, t, o, f"{p:,}")
                for r, t, o, p, leaf in zip(self.rows["layer"], self.rows["type"], self.rows["output"],
                                            self.rows["params"], self.rows["leaf"])]
        widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
        line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
        out = [line(head), line(["-" * w for w in widths]), *(line(r) for r in rows)]
        out.append(f"\n{self.model['parameters']:,} parameters in all; input "
                   f"(N, {', '.join(map(str, self.model['input_shape']))}); task: {self.model['task']}")
        if self.model.get("squash"):
            out.append(f"The model ends in a {self.model['squash']} module: analyses that need logits read its input.")
        for note in self.model.get("notes") or []:
            out.append(f"note: {note}")
        return "\n".join(out)

    def _repr_html_(self) -> str:
        body = "".join(f"<tr><td><code>{r}</code></td><td>{t}</td><td>{o}</td><td>{p:,}</td></tr>"
                       for r, t, o, p in zip(self.rows["layer"], self.rows["type"], self.rows["output"],
                                             self.rows["params"]))
        return f"<table><tr><th>layer</th><th>type</th><th>output</th><th>params</th></tr>{body}</table>"


def overview(subject) -> OverviewResult:
    """The model's layers (one forward pass on a sample input finds them) and its description."""
    rows = {"layer": [], "type": [], "output": [], "params": [], "leaf": [], "note": []}
    for i in subject.layers:
        rows["layer"].append(i.name)
        rows["type"].append(i.type)
        rows["output"].append("x".join(map(str, i.output_shape)) if i.output_shape else "?")
        rows["params"].append(i.params)
        rows["leaf"].append(i.is_leaf)
        rows["note"].append(i.note)
    return OverviewResult(subject.describe(), rows)
