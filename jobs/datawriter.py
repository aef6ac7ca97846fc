"""The two kinds of ``data/`` shard a job writes: WebDataset tars and Parquet files.

Both are written to a private temp file and published by the worker's one atomic writer
(``storage.Location.publish_file``), marker last; both are byte-identical for the same input.

Parquet shards hold one row per sample that left the job: ``__key__``, the image as a Hugging
Face image struct ``{bytes, path}`` (path always null) under the input's image column name, the
input's other columns carried through unchanged (each sample's ``RawSample.columns``, a
one-row table whose schema metadata keeps the input's Hugging Face features), and the public
metadata as one struct column ``faceveil`` (``width, height, status, faces``, faces as in
the WebDataset ``.json``). The schema's ``huggingface`` metadata declares the image column an
``Image``, so ``datasets.load_dataset("parquet", ...)`` decodes it with no hand-written features.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum

import pyarrow as pa
import pyarrow.parquet as pq

from faceveil.anon_core.results import AnonResult
from faceveil.jobs.shardio import TarWriter, sniff_ext
from faceveil.manifests.canonical import canonical_json

KEY_COLUMN = "__key__"
META_COLUMN = "faceveil"
IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
_FACE = pa.struct(
    [("bbox", pa.list_(pa.float32())), ("score", pa.float32()),
     ("landmarks5", pa.list_(pa.float32())), ("method", pa.string()), ("pseudonym", pa.string())]
)  # fmt: skip
META_STRUCT = pa.struct(
    [("width", pa.int32()), ("height", pa.int32()), ("status", pa.string()),
     ("faces", pa.list_(_FACE))]
)  # fmt: skip
RESERVED = frozenset({KEY_COLUMN, META_COLUMN})


class OutputFormat(StrEnum):
    """What ``data/`` holds: WebDataset tars (``KEY.jpg`` + ``KEY.json``) or Parquet files."""

    WEBDATASET = "webdataset"
    PARQUET = "parquet"


@dataclass(frozen=True)
class OutputSpec:
    """How a worker writes ``data/``: ``format``, and for Parquet the image column's name."""

    format: OutputFormat = OutputFormat.WEBDATASET
    image_column: str = "image"

    @property
    def suffix(self) -> str:
        return ".parquet" if self.format == OutputFormat.PARQUET else ".tar"


class TarData:
    """A WebDataset tar: ``KEY.EXT`` then ``KEY.json`` per sample."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file = open(path, "wb")  # noqa: SIM115 (closed by finish/close)
        self._tar = TarWriter(self._file)

    def observe(self, columns: pa.Table | None) -> None:
        """Input columns are not carried into tars."""

    def add(self, key: str, result: AnonResult, columns: pa.Table | None) -> None:
        self._tar.add(f"{key}.{result.ext}", result.encoded)
        self._tar.add(f"{key}.json", canonical_json(result.metadata()))

    def finish(self) -> None:
        self._tar.close()
        self._file.close()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


class ParquetData:
    """A Parquet shard (see the module docstring); rows are kept in memory until ``finish``."""

    def __init__(self, path: str, image_column: str) -> None:
        self.path = path
        self.image_column = image_column
        self._keys: list[str] = []
        self._images: list[dict] = []
        self._meta: list[dict] = []
        self._carried: list[pa.Table] = []
        self._schema = pa.schema([])

    def observe(self, columns: pa.Table | None) -> None:
        """Learn the carried columns' schema from any sample read (quarantined ones too), so a
        shard whose every sample was quarantined still has the dataset's schema."""
        if columns is not None and not self._schema.names:
            self._schema = columns.schema

    def add(self, key: str, result: AnonResult, columns: pa.Table | None) -> None:
        self._keys.append(key)
        self._images.append({"bytes": result.encoded, "path": None})
        meta = result.metadata()
        self._meta.append({k: meta[k] for k in ("width", "height", "status", "faces")})
        if columns is not None:
            self._carried.append(columns)

    def finish(self) -> None:
        pq.write_table(self._table(), self.path, compression="zstd")

    def close(self) -> None:
        pass

    def _table(self) -> pa.Table:
        schema = self._schema.remove_metadata()
        arrays = [pa.array(self._keys, pa.string()), pa.array(self._images, IMAGE_STRUCT)]
        fields = [pa.field(KEY_COLUMN, pa.string()), pa.field(self.image_column, IMAGE_STRUCT)]
        carried = (
            pa.concat_tables([t.cast(schema) for t in self._carried]) if self._carried else None
        )
        for i in range(len(schema.names)):
            arrays.append(
                carried.column(i) if carried is not None else pa.array([], schema.field(i).type)
            )
            fields.append(schema.field(i))
        arrays.append(pa.array(self._meta, META_STRUCT))
        fields.append(pa.field(META_COLUMN, META_STRUCT))
        features = {**_features(self._schema), self.image_column: {"_type": "Image"}}
        hf = json.dumps({"info": {"features": features}}, sort_keys=True)
        schema = pa.schema(fields, metadata={"huggingface": hf})
        return pa.Table.from_arrays(arrays, schema=schema)


def _features(schema: pa.Schema) -> dict:
    """The input's Hugging Face features of the carried columns, from their schema metadata."""
    blob = (schema.metadata or {}).get(b"huggingface")
    features = (json.loads(blob).get("info") or {}).get("features") if blob else None
    return {k: v for k, v in (features or {}).items() if k in schema.names}


def parquet_samples(fileobj) -> Iterator[tuple[str, str, bytes, dict]]:
    """(key, ext, image bytes, public metadata) of each row of a Parquet ``data/`` shard (read
    back by restore, rekey and the residual scan); the image column is the one the schema's
    Hugging Face metadata calls an Image."""
    table = pq.read_table(fileobj)
    blob = (table.schema.metadata or {}).get(b"huggingface", b"{}")
    features = (json.loads(blob).get("info") or {}).get("features") or {}
    images = [k for k, v in features.items() if isinstance(v, dict) and v.get("_type") == "Image"]
    if len(images) != 1 or not set(table.column_names) >= RESERVED:
        raise ValueError("not a faceveil Parquet data shard (no __key__, faceveil or Image column)")
    columns = (table.column(c).to_pylist() for c in (KEY_COLUMN, images[0], META_COLUMN))
    for key, image, meta in zip(*columns, strict=True):
        yield key, sniff_ext(image["bytes"]), image["bytes"], meta


def data_writer(spec: OutputSpec, folder: str) -> TarData | ParquetData:
    """A writer of one ``data/`` shard into a file in ``folder`` (private, temporary)."""
    path = os.path.join(folder, "data" + spec.suffix)
    if spec.format == OutputFormat.PARQUET:
        return ParquetData(path, spec.image_column)
    return TarData(path)
