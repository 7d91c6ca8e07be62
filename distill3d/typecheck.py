"""The runtime type checker the test suite runs every function of the packages under (jaxtyping's import hook,
pyproject.toml `addopts`): beartype, with the numeric tower of PEP 484 (an int is accepted where a float is
annotated, as a Python reader expects of `x: float`)."""

from __future__ import annotations

from beartype import BeartypeConf, beartype

typechecker = beartype(conf=BeartypeConf(is_pep484_tower=True))
