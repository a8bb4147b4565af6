"""Where each run-config field came from on the command line, so that an error names what the user typed.

The config classes name a bad field as their Python API does (`TrainConfig.lr=-1: must be > 0`); the CLI says
`--train.lr=-1: ...` for an override, `my.yaml: train.lr=-1: ...` for a field of the --config file, and the verb's
own flag (`--vocab-size=3: ...`) for a field that flag set.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Iterator
from typing import Any

SECTION_OF = {"ModelConfig": "model", "TrainConfig": "train", "DataConfig": "data"}
# a field as the config classes name it; a key inside a mapping field too: "ModelConfig.rope_scaling.factor"
_FIELD = re.compile(r"\b(ModelConfig|TrainConfig|DataConfig)\.(\w+(?:\.\w+)*)")


class FieldOrigins:
    """The words for each (section, field path) the user set, recorded in the order the values are applied: a later
    source overrides an earlier one as its value does."""

    def __init__(self) -> None:
        self._words: dict[tuple[str, str], str] = {}

    def file(self, path: Any, data: dict) -> None:
        """Every field of a run-config mapping read from the YAML file `path`."""
        for section, fields in data.items():
            if isinstance(fields, dict):
                for key in fields:
                    self._words[(str(section), str(key))] = f"{path}: {section}.{key}"

    def flag(self, flag: str, section: str, field: str) -> None:
        """A verb's own flag that sets one field (`--data` sets data.source)."""
        self._words[(section, field)] = flag

    def overrides(self, args: list[str]) -> None:
        """`--section.field VALUE` and `--section.field=VALUE` pairs, read as training.config.apply_overrides reads
        them (a value is the next argument, whatever it looks like)."""
        from neurallayers.training.config import override_pairs

        for _, key, _ in override_pairs(args):
            section, _, path = key.partition(".")
            self._words[(section, path)] = f"--{key}"

    def name(self, section: str, path: str) -> str:
        """How the user gave `section.path`: the source of the field, or of the mapping that holds the key; else the
        field as a config file or an override writes it (`model.n_head`, which a preset set)."""
        parts = path.split(".")
        for n in range(len(parts), 0, -1):
            words = self._words.get((section, ".".join(parts[:n])))
            if words is not None:
                return words + "".join(f".{part}" for part in parts[n:])
        return f"{section}.{path}"

    def words(self, message: str) -> str:
        """`message` with each config field it names (`TrainConfig.lr`) in the user's words."""
        return _FIELD.sub(lambda m: self.name(SECTION_OF[m[1]], m[2]), message)

    def renamed(self, error: BaseException) -> BaseException | None:
        """`error` again with its message in the user's words; None when it names no config field."""
        message = error.args[0] if len(error.args) == 1 and isinstance(error.args[0], str) else None
        if message is None or (named := self.words(message)) == message:
            return None
        try:
            return type(error)(named)
        except TypeError:  # an exception type that takes other arguments: the message is what the CLI prints
            return ValueError(named)

    @contextlib.contextmanager
    def naming(self) -> Iterator[None]:
        """Errors raised and warnings shown inside, in the user's words: training and data preparation check fields
        too (a missing `TrainConfig.init_from`, a `DataConfig.tokenizer` that names no file, bf16 on a CPU without
        bf16 dot products: `TrainConfig.precision='bf16'`)."""
        shown = warnings.showwarning

        def show(message, category, *args, **kwargs):
            text = str(message)
            if (named := self.words(text)) != text:
                try:
                    message = category(named)
                except TypeError:  # a category that takes other arguments: the text is what is shown
                    message = named
            shown(message, category, *args, **kwargs)

        warnings.showwarning = show
        try:
            yield
        except (ValueError, FileNotFoundError) as e:
            if (named := self.renamed(e)) is None:
                raise
            raise named from None
        finally:
            warnings.showwarning = shown
