"""Conversion: a dataset version + a template version + a tokenizer -> tokenised Arrow splits, cached.

A conversion artifact (kind `conversions`) holds one `<split>.arrow` per split (an Arrow IPC stream
with `input_ids` and `labels`, both list<int32>; `datasets.Dataset.from_file` loads it) and
`stats.json`. It is keyed by what determines its content: the dataset's, template's and
tokenizer's sha256, `max_len`, `max_source_len` and FORMAT_VERSION, so an identical request
re-uses the registered conversion instead of tokenising again.

The queue calls, in order:

    spec = resolve_convert_spec(session, dataset="faults:1", model="smol", template="plain")
    find_conversion(session, spec.cache_key)           # catalog.conversions; None -> build it
    built = build_conversion(store, spec, dataset, template, tokenizer, report=progress)
    register_conversion(session, spec, built, job_id=job.id, user=user)
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from sqlalchemy.orm import Session

from catalog import conversions as catalog_conversions
from catalog.base_models import get_base_model, local_dir
from catalog.datasets import get_dataset
from catalog.errors import NotFound
from catalog.models import BaseModel, Conversion, Dataset, PromptTemplate
from catalog.names import check_name
from catalog.store import ArtifactStore, StoredArtifact
from catalog.templates import get_template
from datasets_prep.canonical import load_split
from datasets_prep.lengths import DEFAULT_MAX_LEN, default_max_source_len
from datasets_prep.rows import Row
from datasets_prep.spec import FORMAT_VERSION, ConvertSpec, conversion_cache_key
from datasets_prep.templates import default_template_name
from datasets_prep.tokenize import SplitStats, tokenize_rows

STATS_FILE = "stats.json"

REPORT_INTERVAL_S = 0.5

SCHEMA = pa.schema([("input_ids", pa.list_(pa.int32())), ("labels", pa.list_(pa.int32()))])

Report = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class BuiltConversion:
    artifact: StoredArtifact
    stats: dict[str, Any]
    """Per split: rows, dropped, prompt_truncated, output_truncated, tokens, label_tokens,
    max_length, mean_length."""


def model_tokenizer_identity(model: BaseModel) -> str:
    """The recorded tokenizer sha256; a hub model not resolved yet is identified by id and revision."""
    if model.tokenizer_sha256:
        return model.tokenizer_sha256
    return hashlib.sha256(f"hub\x00{model.origin}\x00{model.revision or ''}".encode()).hexdigest()


def resolve_convert_spec(
    session: Session,
    *,
    dataset: str,
    model: str,
    template: str | None = None,
    max_len: int = DEFAULT_MAX_LEN,
    max_source_len: int | None = None,
    store: ArtifactStore | None = None,
) -> ConvertSpec:
    """Resolve names (`dataset` is NAME or NAME:VERSION) and validate; raises NotFound/InvalidInput.

    Without `template`, the model's chat template is used when its tokenizer has one (`store` locates
    an imported model's files), else `plain`. Without `max_source_len`, prompts keep 3/4 of max_len."""
    ds = get_dataset(session, dataset)
    bm = get_base_model(session, model)
    tpl = get_template(session, template or default_template_name(local_dir(store, bm)))
    if max_source_len is None and isinstance(max_len, int) and not isinstance(max_len, bool):
        max_source_len = default_max_source_len(max_len)
    tok = model_tokenizer_identity(bm)
    spec = ConvertSpec(
        dataset_id=ds.id,
        template_id=tpl.id,
        base_model_id=bm.id,
        max_len=max_len,
        max_source_len=max_source_len,
        dataset_ref=ds.ref,
        template_ref=tpl.ref,
        model_name=bm.name,
        tokenizer_sha256=tok,
    )
    spec.cache_key = conversion_cache_key(ds.sha256, tpl.sha256, tok, spec.max_len, spec.max_source_len)
    return spec


def build_conversion(
    store: ArtifactStore,
    spec: ConvertSpec,
    dataset: Dataset,
    template: PromptTemplate,
    tokenizer: Any,
    report: Report | None = None,
) -> BuiltConversion:
    """Tokenise every split of `dataset` into `<split>.arrow` + stats.json and commit the artifact."""
    if dataset.id != spec.dataset_id or template.id != spec.template_id:
        raise ValueError("build_conversion: dataset/template rows do not match the spec")
    progress = _Progress(dataset.total_rows, report)
    stats: dict[str, Any] = {}
    with store.staging() as d:
        for split in dataset.split_counts:
            rows = load_split(store, dataset, check_name(split, "split name"))
            stats[split] = _write_split(
                d / f"{split}.arrow", rows, tokenizer, template, spec, progress
            ).to_json()
        content = {"format_version": FORMAT_VERSION, "cache_key": spec.cache_key, "splits": stats}
        (d / STATS_FILE).write_text(json.dumps(content, indent=1, sort_keys=True) + "\n")
        artifact = store.commit(d, "conversions")
    progress.done()
    return BuiltConversion(artifact=artifact, stats=stats)


def _write_split(
    path: Path,
    rows: Iterable[Row],
    tokenizer: Any,
    template: PromptTemplate,
    spec: ConvertSpec,
    progress: _Progress,
) -> SplitStats:
    """Tokenise `rows` into an Arrow IPC stream at `path`, batch by batch."""
    stats, seen = SplitStats(), 0
    batches = tokenize_rows(
        rows,
        tokenizer,
        template.kind,
        template.body,
        max_len=spec.max_len,
        max_source_len=spec.max_source_len,
        stats=stats,
    )
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, SCHEMA) as writer:
        for batch in batches:
            writer.write_batch(pa.record_batch(batch, schema=SCHEMA))
            progress.advance(path.stem, stats.rows + stats.dropped - seen)
            seen = stats.rows + stats.dropped
    return stats


class _Progress:
    """Calls `report` with rows done / total, at most every REPORT_INTERVAL_S, and once at the end."""

    def __init__(self, total: int, report: Report | None):
        self.total, self.report = total, report
        self.rows_done = 0
        self.last = 0.0

    def advance(self, split: str, rows: int) -> None:
        self.rows_done += rows
        now = time.monotonic()
        if self.report is None or now - self.last < REPORT_INTERVAL_S:
            return
        self.last = now
        self.report(
            {"stage": "tokenize", "split": split, "rows_done": self.rows_done, "rows_total": self.total}
        )

    def done(self) -> None:
        if self.report is not None:
            self.report({"stage": "done", "rows_done": self.rows_done, "rows_total": self.total})


def register_conversion(
    session: Session, spec: ConvertSpec, built: BuiltConversion, *, job_id: int | None, user: str
) -> Conversion:
    """Insert the conversion row in the caller's transaction (an existing row with the same cache
    key, from a concurrent job, is returned instead)."""
    return catalog_conversions.register_conversion(
        session,
        Conversion(
            cache_key=spec.cache_key,
            dataset_id=spec.dataset_id,
            template_id=spec.template_id,
            base_model_id=spec.base_model_id,
            tokenizer_sha256=spec.tokenizer_sha256,
            max_len=spec.max_len,
            max_source_len=spec.max_source_len,
            artifact_uri=built.artifact.uri,
            sha256=built.artifact.sha256,
            stats=built.stats,
            job_id=job_id,
            created_by=user,
        ),
    )


def conversion_path(store: ArtifactStore, conversion: Conversion, split: str) -> Path:
    path = store.path(conversion.artifact_uri) / f"{check_name(split, 'split name')}.arrow"
    if split not in conversion.stats:
        raise NotFound(
            f"conversion {conversion.id} has no split {split!r} (splits: {', '.join(conversion.stats)})"
        )
    if not path.is_file():
        raise NotFound(f"conversion {conversion.id}: {path} is missing from the artifact store")
    return path


def load_tokenized(store: ArtifactStore, conversion: Conversion, split: str) -> Any:
    """The tokenised split as a memory-mapped `datasets.Dataset` (columns input_ids, labels)."""
    from datasets import Dataset as HFDataset

    return HFDataset.from_file(str(conversion_path(store, conversion, split)))
