"""Class names of the synthetic world (the built-in vocabulary ``synth``).

Kept free of imports so the CLI and the vocabulary registry can read it without numpy, PIL or torch.
Every name reads naturally in the prompt "a photo of the {}".
"""

SYNTH_CLASSES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "ring",
    "cross",
    "heart",
    "crescent",
    "arrow",
    "lightning bolt",
    "diamond",
    "hourglass",
)
