"""Command-line overrides: checked before Hydra sees them, and re-applied on top of a resumed run's config.

Plain `key=value` overrides are handed to Hydra as `++key=value` (set or add), so that every key of the
typed configs can be set from the command line even when an experiment's YAML does not spell it out; the
typed validation that follows (systems/typed_config.py) rejects unknown keys with a suggestion, in one line.
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from systems.typed_config import ConfigError, suggest

QUOTE_HINT = (
    "Hydra reads quotes, brackets, commas and non-ASCII letters in a value as syntax: quote the value for Hydra"
    """ inside the shell's quotes, e.g. 'prompt="a cat's hat"'"""
)


def _parse(overrides: list[str]):
    parser = OverridesParser.create()
    try:
        return parser.parse_overrides(overrides=overrides)
    except HydraException as e:
        bad = next((o for o in overrides if not _parses(parser, o)), None)
        what = f"'{bad}'" if bad else f"the command line ({str(e).splitlines()[0]})"
        raise ConfigError(f"cannot parse {what}: {QUOTE_HINT}") from None


def _parses(parser, override: str) -> bool:
    try:
        parser.parse_overrides(overrides=[override])
    except HydraException:
        return False
    return True


def quote_plain_values(argv: list[str], positions: list[int]) -> None:
    """`prompt=a cat's hat` (the shell already removed the user's quotes) → `prompt="a cat's hat"`: a value that
    Hydra cannot parse is quoted for it, unless it holds a comma (it may be a sweep: say so instead)."""
    parser = OverridesParser.create()
    for i in positions:
        key, _, value = argv[i].partition("=")
        if _parses(parser, argv[i]) or "," in value or value[:1] in "\"'[{(":
            continue
        quote = '"' if '"' not in value else "'" if "'" not in value else None
        if quote and _parses(parser, f"{key}={quote}{value}{quote}"):
            argv[i] = f"{key}={quote}{value}{quote}"


def _groups(config_dir: Path) -> set[str]:
    return {p.name for p in config_dir.iterdir() if p.is_dir()}


def experiments(config_dir: Path) -> list[str]:
    return sorted(p.stem for p in (config_dir / "experiment").glob("*.yaml"))


def precheck(config_dir: Path, argv: list[str]) -> None:
    """Validate experiment names and rewrite plain key overrides in place (argv is sys.argv[1:])."""
    positions = [i for i, a in enumerate(argv) if not a.startswith("-") and "=" in a]
    flags_with_values = {"--config-name", "-cn", "--config-path", "-cp", "--config-dir", "-cd"}
    positions = [i for i in positions if i == 0 or argv[i - 1] not in flags_with_values]
    quote_plain_values(argv, positions)
    parsed = _parse([argv[i] for i in positions])
    groups = _groups(config_dir)
    known = experiments(config_dir)
    for i, override in zip(positions, parsed, strict=True):
        key = override.key_or_group
        if key == "experiment":
            values = override.sweep_string_or_list if override.is_sweep_override() else [override.value()]
            values = values if isinstance(values, list) else [v.strip() for v in str(values).split(",")]
            for value in values:
                if str(value) not in known:
                    close = suggest(str(value), known)
                    hint = f"{close} " if close.startswith("did you") else ""
                    raise ConfigError(f"unknown experiment '{value}': {hint}(available: {', '.join(known)})")
            continue
        if (
            key.split("/")[0] in groups
            or key.startswith("hydra")
            or override.is_add()
            or override.is_delete()
        ):
            continue
        if override.is_force_add():
            continue
        argv[i] = "++" + argv[i]


def apply_overrides(cfg: DictConfig, overrides: list[str]) -> None:
    """Apply command-line overrides to an already composed config (used for resume=)."""
    for override in _parse(overrides):
        if override.is_sweep_override():
            raise ConfigError(f"'{override.input_line}': sweeps cannot be applied to a resumed run")
        key = override.key_or_group
        if override.is_delete():
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(cfg, parent) if parent else cfg
            if isinstance(node, DictConfig) and leaf in node:
                del node[leaf]
            continue
        OmegaConf.update(cfg, key, override.value(), merge=True, force_add=True)
