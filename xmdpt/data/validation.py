"""The `validate` stage: Great Expectations 1.x suites from ``data_specs/`` over the pairs and poses.

For each table (poses first, since the pair rules need the set of images with a valid pose):

1. table-level input checks: the Arrow schema equals the suite's ``SCHEMA``, the columns match,
   the row count equals the upstream manifest, and the manifest's counts add up;
2. row-level rules (``row_expectations``): the rows they flag are quarantined with the rule's
   reason and the offending value, the rest go on;
3. table-level rules on the rows that passed (``clean_expectations``): identity in both splits,
   an empty split, duplicates.

Any table-level failure raises :class:`DataValidationError` carrying a readable report (also
written to ``{artifacts_dir}/validate/report.md``; ``report.json`` holds the numbers, as DVC
metrics). Otherwise the clean ``pairs`` and ``poses`` and the ``quarantine`` of every stage so far
are written under ``{storage_root}/validate/{hash}/`` and ``{artifacts_dir}/validate/manifest.json``
points to them: that is what downstream stages read.

Great Expectations takes seconds to import: it is imported only inside this code path.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd
import pyarrow as pa

from xmdpt.core.config import XMDPTConfig
from xmdpt.data.quarantine import fresh_prefix, quarantine_table, read_table, summarize_reasons, write_table
from xmdpt.data.schema import IMAGE_PATH, QUARANTINE_SCHEMA, SPLIT
from xmdpt.core.manifests import PairsManifest, PosesManifest, TableEntry, ValidateManifest, ValidateTables
from xmdpt.core.storage import stage_prefix

logger = logging.getLogger(__name__)

STAGE_NAME = "validate"
SUITES = ("poses", "pairs")  # order matters: pair rules look at the clean poses
UPSTREAM = ("pairs", "poses")


class DataValidationError(RuntimeError):
    """A table-level rule failed; ``str(err)`` is the readable report, ``err.report`` the numbers."""

    def __init__(self, text: str, report: dict[str, Any]) -> None:
        super().__init__(text)
        self.report = report


# --------------------------------------------------------------------------------------------
# Suites
# --------------------------------------------------------------------------------------------


def specs_dir(cfg: XMDPTConfig) -> Path:
    """``paths.data_specs_dir``; a relative path is taken from the cwd, else from the repository."""
    p = Path(cfg.paths.data_specs_dir)
    if p.is_dir() or p.is_absolute():
        return p
    repo = Path(__file__).resolve().parents[2] / p
    return repo if repo.is_dir() else p


def load_spec(directory: Path, name: str) -> ModuleType:
    """Import ``{directory}/{name}.py`` (a suite file) as a module."""
    path = directory / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: suite file not found (paths.data_specs_dir = {directory})")
    spec = importlib.util.spec_from_file_location(f"xmdpt_data_specs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for attr in ("TABLE", "SCHEMA", "ROW_KEY", "derive", "derive_clean", "input_expectations",
                 "row_expectations", "clean_expectations"):
        if not hasattr(module, attr):
            raise ValueError(f"{path}: suite file lacks {attr!r}")
    return module


def specs_hash(directory: Path) -> str:
    h = hashlib.sha256()
    for name in SUITES:
        h.update((directory / f"{name}.py").read_bytes())
    return h.hexdigest()[:16]


class SuiteRunner:
    """An ephemeral GE context; runs one suite on one dataframe through a Checkpoint."""

    def __init__(self) -> None:
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
        import great_expectations as gx

        self.gx = gx
        self.context = gx.get_context(mode="ephemeral")
        try:
            from great_expectations.data_context.types.base import ProgressBarsConfig

            self.context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        except (ImportError, AttributeError) as e:  # cosmetic only: progress bars stay on
            logger.debug("could not turn GE progress bars off: %s", e)
        self.source = self.context.data_sources.add_pandas("xmdpt")

    def run(self, name: str, df: pd.DataFrame, expectations: list, row_key: list[str],
            parameters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Validate ``df`` against ``expectations``; one dict per expectation with the rows it flags."""
        if not expectations:
            return []
        gx = self.gx
        asset = self.source.add_dataframe_asset(name)
        batch = asset.add_batch_definition_whole_dataframe(f"{name}.all")
        suite = self.context.suites.add(gx.ExpectationSuite(name=f"{name}.suite"))
        for e in expectations:
            suite.add_expectation(e)
        vd = self.context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{name}.vd", data=batch, suite=suite))
        checkpoint = self.context.checkpoints.add(gx.Checkpoint(
            name=f"{name}.checkpoint", validation_definitions=[vd],
            result_format={"result_format": "COMPLETE", "unexpected_index_column_names": list(row_key)},
        ))
        result = checkpoint.run(batch_parameters={"dataframe": df}, expectation_parameters=parameters or {})
        out = []
        for suite_result in result.run_results.values():
            for r in suite_result.results:
                conf = r.expectation_config
                res = r.result or {}
                flagged = []
                for item in res.get("unexpected_index_list") or []:
                    if isinstance(item, dict):
                        key = " ".join(str(item[c]) for c in row_key if c in item)
                        value = {k: v for k, v in item.items() if k not in row_key}
                        flagged.append((key, next(iter(value.values()), None)))
                out.append({
                    "suite": name,
                    "expectation": conf.type,
                    "column": conf.kwargs.get("column") or conf.kwargs.get("column_list"),
                    "success": bool(r.success),
                    "reason": (conf.meta or {}).get("reason", conf.type),
                    "observed_value": _plain(res.get("observed_value")),
                    "unexpected_count": res.get("unexpected_count"),
                    "flagged": flagged,
                    "exception": (r.exception_info or {}).get("exception_message") if r.exception_info else None,
                })
        return out


def _plain(v: Any) -> Any:
    """JSON-friendly observed values."""
    try:
        json.dumps(v)
        return v
    except TypeError:
        return str(v)


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


def _schema_problems(table: pa.Table, schema: pa.Schema, what: str) -> list[str]:
    got = {f.name: f.type for f in table.schema}
    want = {f.name: f.type for f in schema}
    out = []
    for name, t in want.items():
        if name not in got:
            out.append(f"{what}: column {name!r} missing (expected {t})")
        elif got[name] != t:
            out.append(f"{what}: column {name!r} has type {got[name]}, expected {t}")
    out += [f"{what}: unexpected column {n!r}" for n in got if n not in want]
    return out


def _quarantined_rows(results: list[dict[str, Any]]) -> dict[str, str]:
    """``{row key: reason(s)}`` of every row a row-level rule flagged."""
    reasons: dict[str, list[str]] = {}
    for r in results:
        for key, value in r["flagged"]:
            reasons.setdefault(key, []).append(f"{r['reason']} ({r['column']}={value})")
    return {k: f"{k}: " + "; ".join(v) for k, v in reasons.items()}


def _row_keys(df: pd.DataFrame, cols: list[str]) -> pd.Series:
    return df[cols].astype(str).agg(" ".join, axis=1) if len(df) else pd.Series([], dtype=str)


def _render(report: dict[str, Any]) -> str:
    lines = [f"# Data validation: {'PASSED' if report['success'] else 'FAILED'}", ""]
    if report["table_failures"]:
        lines += ["## Table-level failures (the pipeline stops)", ""]
        lines += [f"- {f}" for f in report["table_failures"]] + [""]
    lines += ["## Counts", "", "| table | input | valid | quarantined here | adds up |", "|---|---|---|---|---|"]
    for t, c in report["tables"].items():
        lines.append(f"| {t} | {c['input_rows']} | {c['valid']} | {c['quarantined']} | {c['adds_up']} |")
    lines += ["", f"Quarantine (all stages): {report['quarantine_total']} rows", ""]
    if report["quarantine_reasons"]:
        lines += ["## Quarantine reasons", ""] + [f"- {n} x {k}" for k, n in report["quarantine_reasons"].items()]
        lines.append("")
    failed = [e for e in report["expectations"] if not e["success"]]
    if failed:
        lines += ["## Failed expectations", "", "| suite | expectation | column | rows | reason |",
                  "|---|---|---|---|---|"]
        for e in failed:
            lines.append(f"| {e['suite']} | {e['expectation']} | {e['column']} | {e['unexpected_count']} "
                         f"| {e['reason']} |")
    return "\n".join(lines) + "\n"


@dataclass
class _Findings:
    """What the checks found so far, in the order the report lists it."""

    table_failures: list[str] = field(default_factory=list)
    expectations: list[dict[str, Any]] = field(default_factory=list)
    tables_report: dict[str, dict[str, Any]] = field(default_factory=dict)
    clean: dict[str, pd.DataFrame] = field(default_factory=dict)
    quarantine_parts: list[pa.Table] = field(default_factory=list)


def _check_upstream(upstream: dict[str, Any], found: _Findings) -> None:
    """Each upstream manifest's counts add up and match its quarantine table; keep those quarantines."""
    for stage, m in upstream.items():
        c = m.counts
        if c.input_rows != c.valid + c.quarantined:
            found.table_failures.append(f"{stage} manifest: input_rows {c.input_rows} != valid {c.valid} "
                                        f"+ quarantined {c.quarantined}")
        q = read_table(m.tables.quarantine.uri)
        if q.num_rows != c.quarantined:
            found.table_failures.append(f"{stage} quarantine table has {q.num_rows} rows, "
                                        f"manifest says {c.quarantined}")
        found.quarantine_parts.append(q.select(QUARANTINE_SCHEMA.names).cast(QUARANTINE_SCHEMA))


def _check_inputs(specs: dict[str, ModuleType], upstream: dict[str, Any], runner: SuiteRunner,
                  found: _Findings) -> dict[str, pa.Table]:
    """Table-level input checks of each suite's table (schema, input expectations); return the tables."""
    raw_tables: dict[str, pa.Table] = {}
    for name in SUITES:
        spec = specs[name]
        entry: TableEntry = getattr(upstream[name].tables, spec.TABLE)
        table = read_table(entry.uri)
        raw_tables[name] = table
        found.table_failures += _schema_problems(table, spec.SCHEMA, f"{name} table ({entry.uri})")
        df = table.to_pandas()
        res = runner.run(f"{name}.input", df, spec.input_expectations(), spec.ROW_KEY,
                         {"manifest_rows": entry.rows})
        found.expectations += res
        found.table_failures += [f"{name}: {r['reason']} (observed {r['observed_value']})"
                                 for r in res if not r["success"]]
    return raw_tables


def _check_rows(name: str, spec: ModuleType, df: pd.DataFrame, runner: SuiteRunner, found: _Findings) -> None:
    """Quarantine the rows a row-level rule flags, then run the table-level rules on the rest."""
    clean = found.clean
    context = {"pose_keys": set(zip(clean["poses"][IMAGE_PATH], clean["poses"][SPLIT]))} if name == "pairs" else {}
    derived = spec.derive(df, **context)
    res = runner.run(f"{name}.rows", derived, spec.row_expectations(), spec.ROW_KEY)
    found.expectations += res
    bad = _quarantined_rows(res)
    keys = _row_keys(df, spec.ROW_KEY)
    keep = ~keys.isin(set(bad))
    clean[name] = df[keep.values].reset_index(drop=True)
    found.quarantine_parts.append(quarantine_table(STAGE_NAME, sorted(bad.items())))
    for reason in list(bad.values())[:20]:
        logger.warning("quarantined %s", reason)
    res = runner.run(f"{name}.clean", spec.derive_clean(clean[name]), spec.clean_expectations(), spec.ROW_KEY)
    found.expectations += res
    found.table_failures += [f"{name}: {r['reason']} (observed {r['observed_value']}"
                             + (f"; rows {sorted({k for k, _ in r['flagged']})[:10]}" if r["flagged"] else "") + ")"
                             for r in res if not r["success"]]
    n_in, n_ok, n_q = len(df), len(clean[name]), int((~keep).sum())
    found.tables_report[name] = {"input_rows": n_in, "valid": n_ok, "quarantined": n_q,
                                 "adds_up": n_in == n_ok + n_q}
    if n_in != n_ok + n_q:
        found.table_failures.append(f"{name}: {n_in} input rows != {n_ok} valid + {n_q} quarantined")


def _write_outputs(cfg: XMDPTConfig, upstream: dict[str, Any], specs: dict[str, ModuleType], directory: Path,
                   found: _Findings) -> tuple[dict, dict]:
    """Write the clean tables, the quarantine, the report and the manifest; return ``(manifest, report)``."""
    quarantine = pa.concat_tables(found.quarantine_parts)
    tables_report, clean = found.tables_report, found.clean
    directory_hash = specs_hash(directory)
    prefix = fresh_prefix(stage_prefix(cfg.paths.storage_root, STAGE_NAME, {"data_specs": directory_hash},
                                       {s: m.key() for s, m in upstream.items()}))
    out_tables = ValidateTables(
        pairs=TableEntry(**write_table(prefix, "pairs", pa.Table.from_pandas(
            clean["pairs"], schema=specs["pairs"].SCHEMA, preserve_index=False))),
        poses=TableEntry(**write_table(prefix, "poses", pa.Table.from_pandas(
            clean["poses"], schema=specs["poses"].SCHEMA, preserve_index=False))),
        quarantine=TableEntry(**write_table(prefix, "quarantine", quarantine)),
    )
    report = _report(True, [], found.expectations, tables_report, quarantine)
    _write_report(cfg, report)
    n_in = sum(t["input_rows"] for t in tables_report.values())
    n_ok = sum(t["valid"] for t in tables_report.values())
    manifest = ValidateManifest(
        uri=prefix,
        params={"data_specs": directory_hash},
        dataset_root=cfg.paths.dataset_root,
        layout=upstream["pairs"].layout,
        inputs={s: m.key() for s, m in upstream.items()},
        tables=out_tables,
        counts={"input_rows": n_in, "valid": n_ok, "quarantined": n_in - n_ok,
                "quarantined_upstream": quarantine.num_rows - (n_in - n_ok),
                **{f"{t}_{k}": v for t, c in tables_report.items() for k, v in c.items() if k != "adds_up"}},
    ).write(ValidateManifest.path(cfg.paths.artifacts_dir))
    return manifest, report


def validate_dataset(cfg: XMDPTConfig) -> tuple[dict, dict]:
    """Run the `validate` stage; return ``(manifest, report)``.

    Raises:
        DataValidationError: a table-level rule failed (schema, counts, leakage, empty split);
            the message is the readable report.
    """
    art = cfg.paths.artifacts_dir
    upstream = {"pairs": PairsManifest.load(art), "poses": PosesManifest.load(art)}
    directory = specs_dir(cfg)
    specs = {name: load_spec(directory, name) for name in SUITES}
    runner = SuiteRunner()
    found = _Findings()

    _check_upstream(upstream, found)
    raw_tables = _check_inputs(specs, upstream, runner, found)
    if found.table_failures:
        return _fail(cfg, found.table_failures, found.expectations, found.tables_report, found.quarantine_parts)
    for name in SUITES:
        _check_rows(name, specs[name], raw_tables[name].to_pandas(), runner, found)
    if found.table_failures:
        return _fail(cfg, found.table_failures, found.expectations, found.tables_report, found.quarantine_parts)
    return _write_outputs(cfg, upstream, specs, directory, found)


def _report(success: bool, failures: list[str], expectations: list[dict], tables: dict,
            quarantine: pa.Table | None) -> dict:
    return {
        "success": success,
        "table_failures": failures,
        "num_table_failures": len(failures),
        "tables": tables,
        "quarantine_total": quarantine.num_rows if quarantine is not None else 0,
        "quarantine_reasons": summarize_reasons(quarantine) if quarantine is not None else {},
        "expectations_evaluated": len(expectations),
        "expectations_failed": sum(not e["success"] for e in expectations),
        "expectations": [{k: v for k, v in e.items() if k != "flagged"} for e in expectations],
    }


def _write_report(cfg: XMDPTConfig, report: dict) -> str:
    out = Path(cfg.paths.artifacts_dir) / STAGE_NAME
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    text = _render(report)
    (out / "report.md").write_text(text)
    (logger.info if report["success"] else logger.error)("validation report (%s):\n%s", out / "report.md", text)
    return text


def _fail(cfg: XMDPTConfig, failures: list[str], expectations: list[dict], tables: dict, parts: list) -> tuple:
    quarantine = pa.concat_tables(parts) if parts else None
    report = _report(False, failures, expectations, tables, quarantine)
    text = _write_report(cfg, report)
    stale = Path(cfg.paths.artifacts_dir) / STAGE_NAME / "manifest.json"
    if stale.exists():  # never leave a manifest that points downstream at unvalidated data
        stale.unlink()
    raise DataValidationError(text, report)
