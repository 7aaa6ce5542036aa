"""Class vocabularies: built-in lists (coco, voc, nuswide, synth), text files and comma lists.

A vocabulary line is either ``name`` or ``name = prompt words``: the name is the label written to outputs (and
matched against ground truth, e.g. VOC's ``diningtable``), the prompt words go into the template
(``a photo of the dining table``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from cdul_rt.errors import CdulError, did_you_mean

DEFAULT_TEMPLATE = "a photo of the {}"
_FILE_BUILTINS = ("coco", "voc", "nuswide")


@dataclass(frozen=True)
class Vocabulary:
    """An ordered list of class names with the words used for each in the prompt."""

    name: str
    classes: tuple[str, ...]
    prompt_names: tuple[str, ...]

    def prompts(self, template: str = DEFAULT_TEMPLATE) -> list[str]:
        check_template(template)
        return [template.format(p) for p in self.prompt_names]

    def fingerprint(self) -> str:
        text = "\n".join(f"{c}={p}" for c, p in zip(self.classes, self.prompt_names))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.classes)


def builtin_names() -> list[str]:
    return [*_FILE_BUILTINS, "synth"]


def check_template(template: str) -> None:
    if template.count("{}") != 1:
        raise CdulError(f"--template must contain exactly one '{{}}' for the class name, got {template!r}")


def parse_lines(name: str, lines: list[str]) -> Vocabulary:
    classes: list[str] = []
    prompts: list[str] = []
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        label, _, prompt = line.partition("=")
        label, prompt = label.strip(), (prompt.strip() or label.strip())
        classes.append(label)
        prompts.append(prompt)
    if not classes:
        raise CdulError(f"vocabulary {name!r} has no classes")
    dupes = sorted({c for c in classes if classes.count(c) > 1})
    if dupes:
        raise CdulError(f"vocabulary {name!r} lists classes more than once: {', '.join(dupes)}")
    return Vocabulary(name, tuple(classes), tuple(prompts))


def load_vocabulary(spec: str) -> Vocabulary:
    """Resolve ``--classes``: a built-in name, a text file (one class per line) or a comma list."""
    spec = spec.strip()
    if spec in _FILE_BUILTINS:
        text = resources.files("cdul_rt.vocab_data").joinpath(f"{spec}.txt").read_text(encoding="utf-8")
        return parse_lines(spec, text.splitlines())
    if spec == "synth":
        from cdul_rt.synth.classes import SYNTH_CLASSES

        return parse_lines("synth", list(SYNTH_CLASSES))
    path = Path(spec)
    if path.is_file():
        return parse_lines(path.stem, path.read_text(encoding="utf-8").splitlines())
    if "," in spec:
        return parse_lines("custom", spec.split(","))
    if path.suffix or "/" in spec:
        raise CdulError(f"vocabulary file {spec!r} not found")
    raise did_you_mean(
        spec, builtin_names(), "vocabulary",
        "Built-ins: " + ", ".join(builtin_names()) + "; or give a text file (one class per line) or a comma list.",
    )
