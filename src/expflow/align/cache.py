"""A Parquet cache of what each source read, keyed by the source's fingerprint.

One file per source (``<label>-<hash of its identity>.parquet``); the fingerprint and the
declared step keys sit in the Parquet schema metadata, so checking an entry reads only the
file's footer. A hit returns the points without touching the source; a changed source
(another fingerprint) is read again and its entry replaced.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from expflow.align.sources import RawRun
from expflow.atomic import atomic_write, remove_stale_temps

FORMAT = "expflow.align.cache/1"
META_KEY = b"expflow.align"


class SourceCache:
    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def entry(self, label: str, identity: str, file: str | Path | None = None) -> Path:
        if file is not None:  # the spec's cache_file (seed 002's output_file)
            return Path(file)
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", label)
        digest = hashlib.sha256(identity.encode()).hexdigest()[:12]
        return self.directory / f"{safe}-{digest}.parquet"

    def load(self, label: str, identity: str, fingerprint: str, file: str | Path | None = None) -> RawRun | None:
        path = self.entry(label, identity, file)
        try:
            meta = _meta(pq.read_schema(path).metadata or {})
        except (OSError, pa.ArrowInvalid, ValueError):
            return None  # absent or unreadable: a miss
        if meta.get("format") != FORMAT or meta.get("fingerprint") != fingerprint or meta.get("identity", identity) != identity:
            return None
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowInvalid):
            return None
        return RawRun(table.to_pandas(), dict(meta.get("step_keys", {})), dict(meta.get("info", {})))

    def store(self, label: str, identity: str, fingerprint: str, raw: RawRun, file: str | Path | None = None) -> Path:
        path = self.entry(label, identity, file)
        table = pa.Table.from_pandas(raw.points, preserve_index=False)
        meta = {"format": FORMAT, "fingerprint": fingerprint, "identity": identity, "step_keys": raw.step_keys, "info": raw.info}
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), META_KEY: json.dumps(meta, default=str).encode()})
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path.parent)
        atomic_write(path, lambda f: pq.write_table(table, f))
        return path


def _meta(metadata: dict[bytes, bytes]) -> dict[str, Any]:
    raw = metadata.get(META_KEY)
    return json.loads(raw) if raw else {}
