"""Parquet input: rows of one or many Parquet files as samples, read where they are.

A Parquet file found by the listing (a path, a glob, a folder or an ``s3://`` prefix) gives one
source per row, ``FILE#row=000000000012``; the plan (``jobs.plan``) seals for each row the file,
the row and the sha256 of its image bytes, and the worker reads each planned shard's rows with
one read per file (the row groups that hold them). The image column holds raw bytes or a Hugging
Face image struct ``{bytes, path}``; its ``path`` is never read. The columns a sample carries to
a Parquet output are all the others except the known-boxes column and ``drop_columns``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from faceveil.anon_core.known import BoxesError, parse_boxes
from faceveil.jobs.datawriter import RESERVED
from faceveil.jobs.shardio import sniff_ext

ROW_EXT = "parquet-row"  # the Source.ext of a row of an input Parquet file


@dataclass(frozen=True)
class InputColumns:
    """Which input columns mean what. ``image_column``: raw bytes or an HF image struct;
    ``boxes_column``: known face boxes, a Parquet column or a field of a WebDataset sample's
    ``.json`` (lists of [x1, y1, x2, y2]; ``boxes_normalized``: fractions 0..1 of the width and
    height, as LAION/DataComp ``face_bboxes``, else pixels); ``drop_columns``: input columns
    not carried to a Parquet output (besides the image struct's path, never carried)."""

    image_column: str = "image"
    boxes_column: str | None = None
    boxes_normalized: bool = True
    drop_columns: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, doc: dict) -> InputColumns:
        return cls(**{**doc, "drop_columns": tuple(doc["drop_columns"])})

    def to_json(self) -> dict:
        return {"image_column": self.image_column, "boxes_column": self.boxes_column,
                "boxes_normalized": self.boxes_normalized,
                "drop_columns": list(self.drop_columns)}  # fmt: skip


def is_parquet(path: str) -> bool:
    return path.lower().endswith(".parquet")


def row_uri(uri: str, row: int) -> str:
    """A row's source URI (zero-padded: listing order is row order)."""
    return f"{uri}#row={row:012d}"


def file_rows(fs, path: str, columns: InputColumns) -> tuple[int, pa.Schema]:
    """The row count and the schema of an input Parquet file, after checking its columns."""
    with fs.open(path, "rb") as f:
        meta = pq.ParquetFile(f)
        schema, rows = meta.schema_arrow, meta.metadata.num_rows
    names = set(schema.names)
    if columns.image_column not in names:
        raise ValueError(
            f"a Parquet input has no image column {columns.image_column!r} "
            f"(columns: {', '.join(schema.names)}); name it with --image-column"
        )
    kind = schema.field(columns.image_column).type
    is_struct = pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0
    if not (pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or is_struct):
        raise ValueError(f"image column {columns.image_column!r} is {kind}, not bytes or an "
                         "image struct {bytes, path}")  # fmt: skip
    if columns.boxes_column and columns.boxes_column not in names:
        raise ValueError(f"a Parquet input has no boxes column {columns.boxes_column!r}")
    clash = RESERVED & set(carried(schema, columns))
    if clash:
        raise ValueError(f"input column {sorted(clash)[0]!r} has the name of an output column; "
                         "drop it with --drop-columns")  # fmt: skip
    return rows, schema


def carried(schema: pa.Schema, columns: InputColumns) -> list[str]:
    """The input columns a Parquet output carries, in input order."""
    left_out = {columns.image_column, columns.boxes_column, *columns.drop_columns}
    return [n for n in schema.names if n not in left_out]


def _image_bytes(value) -> bytes | None:
    return value.get("bytes") if isinstance(value, dict) else value


def _empty_reason(value) -> str:
    if isinstance(value, dict) and value.get("path"):
        return "image struct holds a path but no bytes (paths are not followed)"
    return "empty image cell"


def planned_boxes(value, normalized: bool) -> dict:
    """A sample's known boxes as planned: ``{"boxes": [...], "normalized": bool}`` or an
    ``{"error": ...}``."""
    try:
        boxes = parse_boxes(value)
    except BoxesError as exc:
        return {"error": f"known boxes: {exc}"}
    return {"boxes": boxes.tolist(), "normalized": normalized}


def _read_rows(fs, path: str, rows: list[int], names: list[str]) -> pa.Table:
    """Rows ``rows`` (sorted) of columns ``names``, reading only the row groups that hold them."""
    with fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        starts = np.cumsum([0] + [pf.metadata.row_group(i).num_rows
                                  for i in range(pf.num_row_groups)])  # fmt: skip
        first = int(np.searchsorted(starts, rows[0], side="right") - 1)
        last = int(np.searchsorted(starts, rows[-1], side="right") - 1)
        table = pf.read_row_groups(list(range(first, last + 1)), columns=names)
    return table.take(pa.array(np.asarray(rows) - starts[first]))


def describe_rows(fs, protocol: str, sources: list, columns: InputColumns) -> list[dict]:
    """The plan's check of each row source (one read per file): where it is, the sha256 of its
    image bytes and its known boxes; ``{"error": ...}`` for a row without image bytes."""
    checks: list[dict] = []
    for path, group in _by_file(sources):
        names = [columns.image_column, *([columns.boxes_column] if columns.boxes_column else [])]
        table = _read_rows(fs, path, [s.start for s in group], names)
        images = table.column(columns.image_column).to_pylist()
        boxes = table.column(columns.boxes_column).to_pylist() if columns.boxes_column else None
        for i, source in enumerate(group):
            data = _image_bytes(images[i])
            if not data:
                checks.append({"error": _empty_reason(images[i])})
                continue
            check = {"protocol": protocol, "path": path, "start": source.start, "end": None,
                     "ext": sniff_ext(data), "size": len(data),
                     "sha256": hashlib.sha256(data).hexdigest(), "row": True}  # fmt: skip
            if boxes is not None:
                check["boxes"] = planned_boxes(boxes[i], columns.boxes_normalized)
            checks.append(check)
    return checks


def _by_file(sources: list) -> Iterator[tuple[str, list]]:
    group: list = []
    for source in sources:
        if group and source.path != group[0].path:
            yield group[0].path, group
            group = []
        group.append(source)
    if group:
        yield group[0].path, group


@dataclass
class RowRead:
    """One planned row as read now: image bytes (None: see ``reason``) and carried columns."""

    data: bytes | None
    reason: str
    columns: pa.Table | None


def read_planned_rows(checks: list[dict], columns: InputColumns, changed: str) -> list[RowRead]:
    """Each planned row (``checks`` of one file, in order) read with one read of that file;
    a row whose image bytes differ from the plan comes back with the reason ``changed``."""
    check0 = checks[0]
    fs = fsspec.filesystem(check0["protocol"])
    with fs.open(check0["path"], "rb") as f:
        schema = pq.ParquetFile(f).schema_arrow
    keep = carried(schema, columns)
    table = _read_rows(fs, check0["path"], [c["start"] for c in checks],
                       [columns.image_column, *keep])  # fmt: skip
    images = table.column(columns.image_column).to_pylist()
    rest = table.select(keep).replace_schema_metadata(schema.metadata)
    out = []
    for i, check in enumerate(checks):
        data = _image_bytes(images[i]) or b""
        if len(data) != check["size"] or hashlib.sha256(data).hexdigest() != check["sha256"]:
            out.append(RowRead(None, changed, rest.slice(i, 1)))
        else:
            out.append(RowRead(data, "", rest.slice(i, 1)))
    return out


def boxes_member(check: dict) -> bytes | None:
    """The ``boxes`` member of a planned sample (see ``jobs.worker.known_boxes``), if any."""
    boxes = check.get("boxes")
    if boxes is None:
        return None
    return json.dumps(boxes).encode()
