"""Stage-manifest contract machinery: :class:`Record`, :class:`StageManifest` and strict parsing.

A stage builds its manifest as a dataclass (one per stage, in :mod:`xmdpt.core.manifests`) and
writes it with :meth:`StageManifest.write`; a downstream stage reads it with
:meth:`StageManifest.read` and uses attributes (``features.tables.features.uri``) instead of
indexing nested dicts. The JSON on disk is the dataclass's :meth:`~Record.to_dict`: every field
under its own key, plus ``stage``, ``format_version`` (the stage's
:attr:`~StageManifest.FORMAT_VERSION`) and the storage layer's ``manifest_version``, so DVC metrics,
plots and readers of the raw JSON see the same keys as before.

Parsing is strict: a missing field, a field of the wrong type or an unknown field is an error
naming the file, the stage and the (dotted) field. A manifest whose ``format_version`` differs
from the one this code writes fails with :class:`ManifestVersionError` naming the stage and the
version found; manifests written before versions existed have no ``format_version`` (found:
none) and are treated as older. Rerunning the stage (``dvc repro <stage>``; ``dvc repro -f
<stage>`` when DVC says it is up to date) rewrites the manifest at the current version.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, ClassVar, Mapping, TypeVar

from xmdpt.core import storage
from xmdpt.core.typed_config import field_hints, parse_fields

__all__ = ["ManifestError", "ManifestVersionError", "Record", "StageManifest", "manifest_path", "optional_key",
           "run_record"]

M = TypeVar("M", bound="StageManifest")

_OMIT_IF_NONE = "omit_if_none"
_RUN_RECORD = "run_record"


def optional_key(**kwargs: Any) -> Any:
    """A field whose key is absent from the JSON when its value is ``None`` (a key some writers
    leave out), as opposed to an ``Optional`` field always written (``null`` when unknown)."""
    return dataclasses.field(default=None, metadata={_OMIT_IF_NONE: True}, **kwargs)


def run_record(**kwargs: Any) -> Any:
    """A field that records how the run went (wall time, which node or worker did what, MLflow ids,
    where it resumed), not what the stage produced: written like any field, left out of
    :meth:`StageManifest.key`, so that the same inputs give the same content addresses downstream
    on every run and machine."""
    return dataclasses.field(metadata={_RUN_RECORD: True}, **kwargs)


class ManifestError(ValueError):
    """A manifest that does not match its stage's contract (the message names file, stage, field)."""


class ManifestVersionError(ManifestError):
    """A manifest written at another format version than the one this code reads."""


def _rerun(stage: str) -> str:
    return f"rerun the stage: `dvc repro {stage}` (`dvc repro -f {stage}` if DVC says it is up to date)"


def _is_tuple(hint: Any) -> bool:
    return typing.get_origin(hint) is tuple or any(typing.get_origin(a) is tuple for a in typing.get_args(hint))


def _plain(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclasses.dataclass(frozen=True, kw_only=True)
class Record:
    """A frozen part of a manifest: :meth:`to_dict` for JSON; :meth:`StageManifest.from_dict` reads it
    back with :func:`xmdpt.core.typed_config.parse_fields` (the config's checker; ints stay ints)."""

    def __post_init__(self) -> None:
        hints = field_hints(type(self))
        for f in dataclasses.fields(self):  # lists given to tuple fields are stored as tuples
            value = getattr(self, f.name)
            if isinstance(value, list) and _is_tuple(hints[f.name]):
                object.__setattr__(self, f.name, tuple(value))

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and f.metadata.get(_OMIT_IF_NONE):
                continue
            out[f.name] = _plain(value)
        return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class StageManifest(Record):
    """A stage's ``{artifacts_dir}/<stage>/manifest.json``."""

    STAGE: ClassVar[str]
    FORMAT_VERSION: ClassVar[int]
    _ENVELOPE: ClassVar[tuple[str, ...]] = ("stage", "format_version", "manifest_version")

    def to_dict(self) -> dict[str, Any]:
        return {"manifest_version": storage.MANIFEST_VERSION, "format_version": self.FORMAT_VERSION,
                "stage": self.STAGE, **super().to_dict()}

    @classmethod
    def from_dict(cls: type[M], data: Mapping[str, Any], source: str = "") -> M:
        """Parse and check a manifest dict; ``source`` (the file) is named in errors.

        Raises:
            ManifestVersionError: ``format_version`` is absent or not :attr:`FORMAT_VERSION`.
            ManifestError: not this stage's manifest, a field missing, unknown or of the wrong type.
        """
        where = f"{source}: " if source else ""
        if not isinstance(data, Mapping):
            raise ManifestError(f"{where}{cls.STAGE} manifest: expected a JSON object, got {type(data).__name__}")
        if data.get("stage") != cls.STAGE:
            raise ManifestError(f"{where}not a {cls.STAGE} manifest (stage={data.get('stage')!r}); "
                                f"{_rerun(cls.STAGE)}")
        found = data.get("format_version")
        if found != cls.FORMAT_VERSION:
            age = "a newer" if isinstance(found, int) and found > cls.FORMAT_VERSION else "an older"
            raise ManifestVersionError(
                f"{where}{cls.STAGE} manifest has format version {'none' if found is None else found}, "
                f"this code reads version {cls.FORMAT_VERSION} (written by {age} xmdpt); {_rerun(cls.STAGE)}")

        def fail(field: str, problem: str) -> typing.NoReturn:
            raise ManifestError(f"{where}{cls.STAGE} manifest field {field!r}: {problem}; {_rerun(cls.STAGE)}")

        mv = data.get("manifest_version", storage.MANIFEST_VERSION)
        if mv != storage.MANIFEST_VERSION:
            fail("manifest_version", f"expected {storage.MANIFEST_VERSION}, got {mv!r}")
        body = {k: v for k, v in data.items() if k not in cls._ENVELOPE}
        return parse_fields(cls, body, "", fail, int_to_float=False)

    @classmethod
    def coerce(cls: type[M], manifest: "M | Mapping[str, Any]", source: str = "") -> M:
        """``manifest`` as this class: a dict (a stage function's return value) is parsed."""
        if isinstance(manifest, cls):
            return manifest
        return cls.from_dict(manifest, source or f"{cls.STAGE} manifest argument")

    @classmethod
    def read(cls: type[M], path: str | Path) -> M:
        """Read and parse ``path`` (a missing file names the stage to run)."""
        return cls.from_dict(storage.read_manifest(path), str(path))

    @classmethod
    def path(cls, artifacts_dir: str | Path) -> Path:
        """``{artifacts_dir}/<stage>/manifest.json``."""
        return manifest_path(artifacts_dir, cls.STAGE)

    @classmethod
    def load(cls: type[M], artifacts_dir: str | Path) -> M:
        """:meth:`read` of ``{artifacts_dir}/<stage>/manifest.json``, whose output folder must be on this
        machine (after ``git clone`` without ``dvc pull``, or with a store this machine cannot see, the
        error says what to do)."""
        path = cls.path(artifacts_dir)
        manifest = cls.read(path)
        uri = str(getattr(manifest, "uri", "") or "")
        if uri and not storage.is_url(uri) and Path(uri).is_absolute() and not Path(uri).exists():
            raise ManifestError(
                f"{path} names {uri}, which is not on this machine. Bring the outputs of the "
                f"{cls.STAGE!r} stage here with `dvc pull` (the default storage_root, data/store, travels "
                "with dvc push / pull), make the store this manifest names reachable here (an s3:// "
                "paths.storage_root shared by the team, docs/team.md), or rebuild them with `dvc repro --force`")
        return manifest

    def write(self, path: str | Path) -> dict[str, Any]:
        """Check the JSON against the contract (a value of another type than its field's is an
        error here, not a surprise for the next stage), write it atomically (see
        :func:`xmdpt.core.storage.write_manifest`) and return it."""
        data = self.to_dict()
        type(self).from_dict(data, str(path))
        return storage.write_manifest(path, data)

    def identity(self) -> dict[str, Any]:
        """:meth:`to_dict` without the :func:`run_record` fields: what the output is."""
        records = {f.name for f in dataclasses.fields(self) if f.metadata.get(_RUN_RECORD)}
        return {k: v for k, v in self.to_dict().items() if k not in records}

    def key(self) -> str:
        """Identity of this output for downstream content addresses (:func:`xmdpt.core.storage.manifest_key`)."""
        return storage.manifest_key(self)


def manifest_path(artifacts_dir: str | Path, stage: str) -> Path:
    return Path(artifacts_dir) / stage / "manifest.json"
