"""MkDocs hooks: the manual's measured tables are generated from benchmarks/results/*.json, and the
HTTP API reference from the served app's own OpenAPI schema, each time the site is built.

A page asks for a table with an HTML comment on a line of its own, `<!-- table: NAME -->`, where
NAME is a key of TABLES; `<!-- openapi -->` becomes the HTTP reference and `<!-- cli -->` every
command's help, as `vitkit COMMAND --help` prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from statistics import median

import vitkit
from vitkit.cli.main import build_parser
from vitkit.serve import ServeSettings, create_app

RESULTS = Path(__file__).parent.parent / "benchmarks" / "results"
#: the docstrings' Sphinx roles (:func:`name`), which Markdown leaves as text before the code
SPHINX_ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|exc|obj):(?=<code>)")
MARKER = re.compile(r"^<!-- (table: (?P<table>[\w-]+)|(?P<generated>openapi|cli)) -->$", re.MULTILINE)


def host_label(host: dict) -> str:
    """One line naming the machine a measurement was taken on, as its record says."""
    if "description" in host and not host.get("date"):
        return host["description"]
    flags = host.get("cpu_flags") or []
    isa = next((f.upper().replace("_", "-") for f in ("amx_bf16", "avx512_bf16", "avx2") if f in flags), "")
    parts = [host.get("gpu") or host["cpu"], isa, f"{host.get('cores', host['threads'])} cores"]
    parts += [f"torch {host['torch'].split('+')[0]}" if host.get("torch") else "", host.get("date", "")]
    return ", ".join(p for p in parts if p)


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def hosts(name: str) -> list[dict]:
    return json.loads((RESULTS / f"{name}.json").read_text())["hosts"]


def throughput() -> str:
    sections = []
    for entry in hosts("throughput"):
        sections.append(f"#### On {host_label(entry['host'])}")
        for table in entry["sets"]:
            results = table["results"]
            baseline = {
                (r["task"], r["precision"], r["compiled"]): r["images_per_second"]
                for r in results
                if r["library"] == "timm" and not r["grad_checkpointing"]
            }
            rows = [throughput_row(r, baseline) for r in results]
            header = ["library", "precision", "compiled", "grad ckpt", "img/s", "× timm", "% of matmul peak"]
            first = results[0]
            sections.append(f"**{table['title']}** (batch {first['batch']}, {first['img_size']} px)\n")
            sections.append(markdown_table([*header, "step memory MB"], rows))
    sections.append("¹ int8 rows are set against timm's eager fp32 row.")
    return "\n\n".join(sections)


def throughput_row(r: dict, baseline: dict) -> list[str]:
    """One measured variant; int8 is set against timm's eager fp32."""
    reference = baseline.get((r["task"], "fp32" if r["precision"] == "int8" else r["precision"], r["compiled"]))
    ratio = f"{r['images_per_second'] / reference:.2f}" if reference else "–"
    return [
        r["library"],
        r["precision"],
        "yes" if r["compiled"] else "no",
        "yes" if r["grad_checkpointing"] else "no",
        f"{r['images_per_second']:.1f}",
        ratio + (" ¹" if r["precision"] == "int8" and reference else ""),
        f"{100 * r['peak_fraction']:.0f} %" if r.get("peak_fraction") else "–",
        f"{r['peak_memory_mb']:.0f}" if r.get("peak_memory_mb") else "–",
    ]


def two_processes() -> str:
    rows = []
    for entry in hosts("two_processes"):
        alone = entry["rows"][0]["img_per_s"][0]
        for r in entry["rows"]:
            rates = r["img_per_s"]
            rows.append(
                [
                    host_label(entry["host"]),
                    r["setting"],
                    " / ".join(f"{x:,.0f}" for x in rates),
                    " / ".join(f"{x / alone:.2f}" for x in rates),
                ]
            )
    return markdown_table(["host", "setting", "img/s per process", "each × alone"], rows)


def folder_demo() -> str:
    rows = [
        [
            host_label(entry["host"]),
            name,
            r["epochs"],
            f"{100 * r['top1']:.2f} %",
            f"{r['train_seconds']:.0f} s",
            f"{r['img_per_s']:,.0f}",
            f"{100 * r['data_wait_fraction']:.0f} %",
        ]
        for entry in hosts("folder_demo")
        for name, r in entry["rows"].items()
    ]
    header = ["host", "pipeline", "epochs", "held-out top-1", "training time", "train img/s", "waiting for data"]
    return markdown_table(header, rows)


def serving(name: str) -> Callable[[], str]:
    def table() -> str:
        sections = []
        for entry in hosts(name):
            settings = entry["settings"]
            rows = [
                [
                    r["mode"] + (f" ({r['precision']})" if "precision" in r else ""),  # what the server ran
                    r["clients"],
                    f"{r['images_per_second']:.1f}",
                    f"{r['p50_ms']:.0f}",
                    f"{r['p99_ms']:.0f}",
                    f"{r['throughput_vs_off']:.2f}×",
                ]
                for r in sorted(entry["rows"], key=lambda r: (r["clients"], r["mode"]))
            ]
            alone = entry["model_alone"]
            sections.append(
                f"{settings['arch']} on {host_label(entry['host'])}; the model alone, in {alone['precision']}: "
                f"{alone['batch 1']:.0f} img/s at batch 1, {alone['batch 16']:.0f} at batch 16.\n\n"
                + markdown_table(["mode", "clients", "img/s", "p50 ms", "p99 ms", "throughput vs off"], rows)
            )
        return "\n\n".join(sections)

    return table


def rows_table(name: str, columns: dict[str, Callable[[dict], object]], rows: str = "rows") -> Callable[[], str]:
    """A results file whose entries each hold a list of ``rows``: a line per row, its host first,
    then a cell per column (header → the cell made from the row)."""

    def table() -> str:
        lines = [
            [host_label(entry["host"]), *(cell(r) for cell in columns.values())]
            for entry in hosts(name)
            for r in entry[rows]
        ]
        return markdown_table(["host", *columns], lines)

    return table


def field(key: str, spec: str = "") -> Callable[[dict], str]:
    """A row's value, formatted."""
    return lambda row: format(row[key], spec)


def seconds(setting: str) -> Callable[[dict], str]:
    """The median of a row's timed runs at ``setting``."""
    return lambda row: f"{median(row['seconds'][setting]):.1f}"


TABLES: dict[str, Callable[[], str]] = {
    "mnist_demo": rows_table(
        "mnist_demo",
        {
            "precision": field("precision"),
            "epochs": field("epochs", "g"),
            "seed": field("seed"),
            "MNIST test top-1": lambda run: f"{100 * run['top1']:.2f} %",
            "training time": lambda run: f"{run['train_seconds']:.0f} s",
            "whole run": lambda run: f"{run['wall_seconds']:.0f} s",
            "train img/s": field("img_per_s", ",.0f"),
        },
        rows="runs",
    ),
    "throughput": throughput,
    "training_step": rows_table(
        "training_step",
        {
            "model": field("model"),
            "precision": field("precision"),
            "batch": field("batch"),
            "vitkit img/s": field("vitkit_img_per_s", ",.1f"),
            "timm img/s": field("timm_img_per_s", ",.1f"),
            "× timm": lambda row: f"**{row['ratio']:.2f}**",
            "vitkit's kernels": lambda row: ", ".join(row["vitkit_kernels"]),
        },
    ),
    "two_processes": two_processes,
    "folder_demo": folder_demo,
    "serve": serving("serve"),
    "serve-ti16": serving("serve-ti16"),
    "loader": rows_table(
        "loader",
        {
            "pipeline": field("pipeline"),
            "loader workers": field("workers"),
            "loader img/s": field("loader_img_per_s", ",.0f"),
            "model img/s (training)": field("model_img_per_s", ",.0f"),
            "loader / model": field("ratio", ".2f"),
        },
    ),
    "predict_precision": rows_table(
        "predict_precision",
        {
            "model": field("model"),
            "images": field("images", ","),
            **{f"{setting} s": seconds(setting) for setting in ("fp32", "bf16", "int8")},
            "auto s (chose)": lambda row: f"{seconds('auto')(row)} ({row['auto_chose']})",
            "auto × best": lambda row: f"**{row['auto_vs_best']:.2f}**",
            "auto's first use": lambda row: f"{row['auto_first_use']['seconds']:.1f} s",
            "auto, new weights (chose)": lambda row: (
                f"{row['auto_new_weights']['seconds']:.1f} s ({row['auto_new_weights']['chose']})"
            ),
        },
    ),
    "augment": rows_table(
        "augment",
        {
            "augmentation": field("augmentation"),
            "ms per batch": field("ms_per_batch", ".1f"),
            "img/s": field("img_per_s", ",.0f"),
        },
    ),
}


def http_reference() -> str:
    """Every endpoint of the app `vitkit serve` runs, from its OpenAPI schema."""
    with tempfile.TemporaryDirectory() as folder:
        model = vitkit.create_model("Ti/16", num_classes=3, img_size=32, patch_size=16, depth=1)
        vitkit.save_model(folder, model, class_names=["cat", "dog", "fox"])
        schema = create_app(vitkit.load_model(folder), ServeSettings(model_name="MODEL")).openapi()
    sections = []
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            sections.append(f"### `{method.upper()} {path}`\n\n{operation.get('description') or operation['summary']}")
            parameters = [parameter_row(p) for p in operation.get("parameters", [])]
            if parameters:
                sections.append(markdown_table(["parameter", "in", "type", "default", "meaning"], parameters))
            if "requestBody" in operation:
                kinds = ", ".join(f"`{kind}`" for kind in operation["requestBody"]["content"])
                sections.append(f"Body: {kinds}.")
            responses = sorted(operation["responses"].items())
            answers = [[f"`{status}`", answer["description"]] for status, answer in responses]
            sections.append(markdown_table(["status", "answer"], answers))
    schema_text = json.dumps(schema, indent=2)
    sections.append(f'??? note "The whole schema (openapi.json)"\n\n    ```json\n{_indent(schema_text)}\n    ```')
    return "\n\n".join(sections)


def parameter_row(parameter: dict) -> list[str]:
    schema = parameter["schema"]
    default = f"`{schema['default']}`" if "default" in schema else "–"
    kind = schema.get("type") or " or ".join(option.get("type", "?") for option in schema.get("anyOf", [])) or "–"
    description = parameter.get("description", "").replace("\n", " ")
    return [f"`{parameter['name']}`", parameter["in"], kind, default, description]


def cli_reference() -> str:
    """``vitkit --help`` and each command's ``--help``, at a fixed width."""
    os.environ["COLUMNS"] = "100"
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sections = [f"```text\n{parser.format_help()}```"]
    for name, command in commands.choices.items():
        sections.append(f"## `vitkit {name}`\n\n```text\n{command.format_help()}```")
    return "\n\n".join(sections)


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


def on_page_markdown(markdown: str, **_: object) -> str:
    def expand(match: re.Match) -> str:
        if match["table"]:
            return TABLES[match["table"]]()
        return http_reference() if match["generated"] == "openapi" else cli_reference()

    return MARKER.sub(expand, markdown)


def on_page_content(html: str, **_: object) -> str:
    return SPHINX_ROLE.sub("", html)
