"""HDF5 model files: screened, then loaded exactly or not at all, Keras 2 files included.

Keras 3 still reads `.h5` files, but many written by Keras 2 carry config forms it no
longer accepts. `load_legacy_h5` tries the plain Keras 3 loader first; when that fails,
it migrates the file's `model_config` through `legacy_rules`, rebuilds the model with
Keras's own legacy deserializer in safe mode, and loads the weights by layer name from
the same open file that was checked. There is no fallback to tf_keras: it ignores
`safe_mode` for `.h5` files.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from fuse_cli.errors import FuseError, ModelLoadError, first_line
from fuse_cli.formats import _keras_private
from fuse_cli.formats.failures import describe_load_failure, is_unsafe_refusal
from fuse_cli.formats.legacy_refusals import refusal
from fuse_cli.formats.legacy_rules import Config, migrate_config, misread_silently
from fuse_cli.formats.screening import (
    PROVENANCE_ATTRIBUTE,
    attr_text,
    check_config,
    check_hdf5,
    file_size,
    parse_config,
)

if TYPE_CHECKING:
    import h5py
    import keras


def load_hdf5(
    f: IO[bytes], path: Path, *, unsafe: bool
) -> tuple[keras.Model, str | None, list[str], Any]:
    """Check an HDF5 model file and load it from the same open file.

    Returns:
        The model, the writer's Keras version (if recorded), the legacy rules applied,
        and the provenance record fuse keeps beside a merged model (an attribute), or None.

    Raises:
        ModelLoadError: A refused, corrupt or unloadable file.
    """
    import h5py

    try:
        h5 = h5py.File(f, "r")
    except OSError as exc:
        raise ModelLoadError(f"{path}: corrupt HDF5 file: {first_line(exc)}") from None
    with h5:
        try:
            check_hdf5(h5, path, stored=file_size(f))
            config = parse_config(attr_text(h5.attrs["model_config"]) or "", path, "model_config")
            version = attr_text(h5.attrs.get("keras_version"))
            stored_record = attr_text(h5.attrs.get(PROVENANCE_ATTRIBUTE))
            record = (parse_config(stored_record, path, PROVENANCE_ATTRIBUTE)
                      if stored_record is not None else None)
        except ModelLoadError:
            raise
        except Exception as exc:  # h5py raises OSError, KeyError, ... on corrupt structures
            raise ModelLoadError(f"{path}: corrupt HDF5 file: {first_line(exc)}") from None
        if not isinstance(config, dict):
            raise ModelLoadError(f"{path}: model_config is not a JSON object: not a Keras model")
        check_config(config, path)
        # From the same open file that was checked: no window to swap the file.
        model, migrations = load_legacy_h5(path, safe_mode=not unsafe, h5=h5)
    return model, version, migrations, record


# --- reading the file ---------------------------------------------------------------


@dataclass(frozen=True)
class _Header:
    config: Config | None
    keras_version: str


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _read_header(f: h5py.File) -> _Header:
    """The `model_config` JSON and the writer's Keras version; None/unknown if absent."""
    import h5py

    try:
        version = f.attrs.get("keras_version")
        if version is None and isinstance(f.get("model_weights"), h5py.Group):
            version = f["model_weights"].attrs.get("keras_version")
        raw = f.attrs.get("model_config")
        config = json.loads(_text(raw)) if raw is not None else None
    except (OSError, ValueError, RecursionError):
        # Not JSON: the plain loader will say what is wrong in its words.
        return _Header(None, "unknown")
    if not isinstance(config, dict):
        config = None
    return _Header(config, _text(version) if version is not None else "unknown")


def _read_names(group: h5py.Group, key: str) -> list[str]:
    """A list-of-names attribute, including the chunked `key0`, `key1`, ... form."""
    if key in group.attrs:
        return [_text(n) for n in group.attrs[key]]
    names: list[str] = []
    chunk = 0
    while f"{key}{chunk}" in group.attrs:
        names.extend(_text(n) for n in group.attrs[f"{key}{chunk}"])
        chunk += 1
    return names


# --- building and weights -----------------------------------------------------------


def _build_from_config(config: Config, *, safe_mode: bool) -> keras.Model:
    """Rebuild a model from a migrated legacy config, as Keras's H5 loader does.

    Keras 3 has no public entry point for legacy (Keras 2) configs: the new-format
    deserializer behind `keras.models.model_from_json` cannot read them. The rules may
    name fuse's registered objects (`fuse>Keras2HardSigmoid`), so they are registered
    first.
    """
    import fuse_cli.layers  # noqa: F401  (registers the objects the rules may name)

    model: keras.Model = _keras_private.legacy_model_from_config(
        json.dumps(config), safe_mode=safe_mode
    )
    return model


def _legacy_weights(layer: keras.Layer) -> list[keras.Variable]:
    # The order Keras 2 saved a layer's weights in: trainable first, then the rest.
    return list(layer.trainable_weights) + list(layer.non_trainable_weights)


def _leaf_layers(model: keras.Model) -> Iterator[keras.Layer]:
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leaf_layers(layer)
        else:
            yield layer


def _pair_by_owner(model: keras.Model, names: list[str]) -> list[tuple[Any, str]] | None:
    """Pair a nested model's variables with saved names by the layer that owns them.

    Keras 2 saves all of a nested model's weights in one group, each named by the layer
    that owns it (`Conv1/kernel:0`), in Keras 2's trainable-then-frozen order. Matching
    each leaf layer by that name, then by order within the layer, does not depend on
    Keras 3 ordering a partly frozen model the same way. None when the names do not
    identify the layers one to one (the caller then uses Keras's own order).
    """
    by_owner: dict[str, list[str]] = {}
    for name in names:
        by_owner.setdefault(name.split("/", 1)[0], []).append(name)
    pairs: list[tuple[Any, str]] = []
    for leaf in _leaf_layers(model):
        targets = _legacy_weights(leaf)
        if not targets:
            continue
        saved = by_owner.pop(leaf.name, None)
        if saved is None or len(saved) != len(targets):
            return None
        pairs.extend(zip(targets, saved, strict=True))
    return pairs if not by_owner else None


def _assign_layer(layer: keras.Layer, group: h5py.Group) -> None:
    import keras
    import numpy as np

    names = _read_names(group, "weight_names")
    pairs = _pair_by_owner(layer, names) if isinstance(layer, keras.Model) else None
    if pairs is None:
        targets = _legacy_weights(layer)
        if len(targets) != len(names):
            raise ValueError(
                f"layer {layer.name!r} has {len(targets)} weights, the file has {len(names)}"
            )
        pairs = list(zip(targets, names, strict=True))
    for variable, name in pairs:
        dataset = _keras_private.safe_h5_dataset(group, name)
        if tuple(dataset.shape) != tuple(variable.shape):
            raise ValueError(
                f"weight {name!r} of layer {layer.name!r} has shape {tuple(dataset.shape)}, "
                f"the model expects {tuple(variable.shape)}"
            )
        variable.assign(np.asarray(dataset))


def load_weights_by_name(model: keras.Model, weights: h5py.Group) -> None:
    """Load a Keras 2 `model_weights` group into `model`, matching layers by name.

    Each top-level layer takes the group of the same name (a nested model's group holds
    all of its weights). Every weight's shape is checked; a layer of the model without
    weights in the file, or weights in the file without a layer, is an error.

    Raises:
        ValueError: the file's weights do not fit the model.
    """
    saved = set(_read_names(weights, "layer_names"))
    loaded: set[str] = set()
    for layer in model.layers:
        if not _legacy_weights(layer):
            continue
        if layer.name not in saved:
            raise ValueError(f"the file has no weights for layer {layer.name!r}")
        _assign_layer(layer, _keras_private.safe_h5_group(weights, layer.name))
        loaded.add(layer.name)
    for name in sorted(saved - loaded):
        if _read_names(_keras_private.safe_h5_group(weights, name), "weight_names"):
            raise ValueError(f"the file has weights for layer {name!r}, which the model lacks")


def _load_migrated(f: h5py.File, config: Config, *, safe_mode: bool) -> keras.Model:
    model = _build_from_config(config, safe_mode=safe_mode)
    load_weights_by_name(model, _keras_private.safe_h5_group(f, "model_weights"))
    return model


# --- the entry point ----------------------------------------------------------------


def _plain_load(source: Path | h5py.File, *, safe_mode: bool) -> keras.Model:
    # What `keras.saving.load_model` runs for a `.h5` path, called directly because
    # fuse decides the format by content and the file may have any extension.
    model: keras.Model = _keras_private.load_legacy_hdf5(
        str(source) if isinstance(source, Path) else source, safe_mode=safe_mode
    )
    return model


def load_legacy_h5(
    path: Path, *, safe_mode: bool, h5: h5py.File | None = None
) -> tuple[keras.Model, list[str]]:
    """Load a legacy HDF5 model file, migrating its config when plain Keras 3 refuses it.

    The plain Keras 3 loader runs first. When it fails for a reason other than safe
    mode, the stored config is migrated by the rules; if no rule applies, the failure is
    unknown and reported as Keras gave it. A config that Keras 3 would misread without
    an error is migrated without trying the plain loader; one that no rule can make
    exact (`legacy_rules.REFUSALS`) is refused before anything is built.

    Args:
        path: an HDF5 model file (named in messages).
        safe_mode: refuse code-carrying layers (Lambda), as `keras.saving.load_model`.
        h5: the file already open, as fuse checked it: everything is read from it, so
            the file that is loaded is the one that was checked. Opened from `path`
            when not given.

    Returns:
        The model and the names of the rewrite rules applied ([] if plain loading worked).

    Raises:
        ModelLoadError: `"{path}: ... (written by Keras {version})"`.
    """
    if h5 is None:
        import h5py

        try:
            opened = h5py.File(path, "r")
        except OSError as exc:
            raise describe_load_failure(exc, path, written_by="unknown") from None
        with opened:
            return load_legacy_h5(path, safe_mode=safe_mode, h5=opened)
    header = _read_header(h5)
    version = header.keras_version
    reason = refusal(header.config, version) if header.config else None
    if reason:
        # Keras 3 would load it, computing another function: refused before it can.
        raise ModelLoadError(f"{path}: {reason}: refused (written by Keras {version})")
    plain_error: Exception | None = None
    if header.config is None or not misread_silently(header.config):
        try:
            return _plain_load(h5, safe_mode=safe_mode), []
        except FuseError:
            raise
        except Exception as exc:  # whatever Keras raises on this file: classified below
            plain_error = exc
        if is_unsafe_refusal(plain_error):
            raise describe_load_failure(plain_error, path, written_by=version) from None

    try:
        migrated, applied = migrate_config(header.config) if header.config else ({}, [])
    except RecursionError:
        raise ModelLoadError(
            f"{path}: model_config is nested too deeply (written by Keras {version})"
        ) from None
    if not applied:
        # No rule knows this failure: report it as Keras gave it.
        if plain_error is None:
            raise ModelLoadError(
                f"{path}: no model config in the file (written by Keras {version})"
            )
        raise describe_load_failure(plain_error, path, written_by=version) from None
    try:
        return _load_migrated(h5, migrated, safe_mode=safe_mode), applied
    except FuseError:
        raise
    except Exception as exc:  # whatever Keras raises on the migrated config
        after = f" (after the legacy rules {', '.join(applied)})"
        raise describe_load_failure(exc, path, written_by=version, after=after) from None
