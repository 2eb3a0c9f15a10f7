"""The workflow config (config.yaml, then each --configfile): layered as Snakemake layers them, refused
with the new name where a key of an earlier flatmix is met, and read by dotted key with a one-line error
for a missing one. The DAG, `flatmix plan`, `flatmix bench` and `flatmix report` read it through here.
"""

from flatmix.errors import FlatmixError
from flatmix.presets import MIXES_NOTE
from flatmix.runconfig import flatten, read_mapping

# Keys of `experiments` an earlier flatmix spelled otherwise: `*_n` counted images.
RENAMED = {"global_n": "global_mixes", "region_n": "region_mixes"}


def merge(base, update):
    """Snakemake's way of layering config files: nested mappings merge, everything else is replaced."""
    merged = dict(base)
    for key, value in update.items():
        merged[key] = merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    return merged


def load_config(*paths):
    """The workflow config from one or more YAML files, later ones overriding earlier ones."""
    config = {}
    for path in paths:
        config = merge(config, read_mapping(path))
    return config


def check_renamed(config):
    """A one-line error for a key of an earlier flatmix's config, naming the key that replaced it."""
    experiments = config.get("experiments") if isinstance(config, dict) else None
    for key in flatten(experiments) if isinstance(experiments, dict) else ():
        *parents, leaf = key.split(".")
        if leaf in RENAMED:
            raise FlatmixError(f"config: experiments.{key} is now "
                               f"experiments.{'.'.join([*parents, RENAMED[leaf]])} {MIXES_NOTE}")


def get(config, dotted):
    """The value at a dotted key (`experiments.table1.epochs`)."""
    node = config
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            raise FlatmixError(f"config: key {dotted!r} is missing")
        node = node[key]
    return node
