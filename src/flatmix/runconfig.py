"""Run specifications: nested dicts addressed by dotted keys (`train.epochs`, `mixture.global.mixes`).

A run is DEFAULTS, then a named preset, then a YAML file, then `--set key=value` overrides; every key
must exist in DEFAULTS and keep its type, and a wrong key is refused with the nearest valid names.
"""

import difflib
import json
import os
import shlex

import yaml

from flatmix.errors import FlatmixError


def flatten(tree, prefix=""):
    flat = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def unflatten(flat):
    tree = {}
    for dotted, value in flat.items():
        node = tree
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


MAX_CONFIG_BYTES = 1 << 20


class _PlainLoader(yaml.SafeLoader):
    """YAML without aliases: an alias bomb (a few lines that expand to billions of nodes) is refused."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in a flatmix config",
                                              self.peek_event().start_mark)
        return super().compose_node(parent, index)


def read_mapping(path):
    """A YAML file of keys and values (empty: none); one-line errors for an unreadable, oversized (over
    MAX_CONFIG_BYTES), non-UTF-8, aliased, too deeply nested or malformed file."""
    try:
        if os.stat(path).st_size > MAX_CONFIG_BYTES:
            raise FlatmixError(f"config {path} is larger than {MAX_CONFIG_BYTES >> 20} MiB; not a config file")
        with open(path, encoding="utf-8") as f:
            tree = yaml.load(f, Loader=_PlainLoader) or {}
    except OSError as e:
        raise FlatmixError(f"cannot read config {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise FlatmixError(f"config {path} is not UTF-8 text (byte {e.start})") from None
    except yaml.YAMLError as e:
        raise FlatmixError(f"config {path} is not valid YAML: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise FlatmixError(f"config {path} is not valid YAML: nested too deeply") from None
    if not isinstance(tree, dict):
        raise FlatmixError(f"config {path} must be a mapping of keys to values")
    return tree


def set_args(spec):
    """A (partial) run spec as a list of `--set key=value` arguments; values in JSON, which `resolve` reads
    back (so that no path or string reads as other YAML)."""
    return [arg for k, v in flatten(spec).items() for arg in ("--set", f"{k}={json.dumps(v)}")]


def set_flags(spec):
    """set_args as one shell-quoted string, for a command line to print."""
    return shlex.join(set_args(spec))


def nearest(name, names):
    close = difflib.get_close_matches(name, list(names), n=3, cutoff=0.5)
    return f"; nearest: {', '.join(close)}" if close else ""


def _checked(defaults, key, value, where, renamed):
    if key in renamed:
        raise FlatmixError(f"key {key!r} in {where} is now {renamed[key]}")
    if key not in defaults:
        raise FlatmixError(f"unknown key {key!r} in {where}{nearest(key, defaults)}")
    default = defaults[key]
    if default is None or value is None:
        return value
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(default, bool) and isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float))
        value = float(value) if ok else value
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise FlatmixError(f"key {key!r} in {where} must be a {type(default).__name__}, got {value!r}")
    return value


def resolve(defaults, presets, preset=None, config_file=None, sets=(), renamed=None):
    """The full nested run spec; raises FlatmixError naming any unknown preset, key or bad value, and the
    new name of a key in `renamed` ({old: new})."""
    flat_defaults = flatten(defaults)
    flat = dict(flat_defaults)
    layers = []
    if preset is not None:
        if preset not in presets:
            raise FlatmixError(f"unknown preset {preset!r}{nearest(preset, presets)}")
        layers.append((flatten(presets[preset]), f"preset {preset}"))
    if config_file is not None:
        layers.append((flatten(read_mapping(config_file)), str(config_file)))
    overrides = {}
    for item in sets:
        key, sep, text = item.partition("=")
        if not sep:
            raise FlatmixError(f"--set {item!r} must look like key=value")
        try:
            overrides[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError:
            raise FlatmixError(f"--set {item!r}: the value is not valid YAML") from None
    layers.append((overrides, "--set"))
    for layer, where in layers:
        for key, value in layer.items():
            flat[key] = _checked(flat_defaults, key, value, where, renamed or {})
    return unflatten(flat)
