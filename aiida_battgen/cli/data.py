"""``verdi data battgen``: inspect structure batches."""

import click
from aiida.cmdline.commands.cmd_data import verdi_data
from aiida.cmdline.params import arguments, types
from aiida.cmdline.utils import decorators, echo


@verdi_data.group("battgen")
def data_battgen():
    """Inspect aiida-battgen data (structure batches)."""


@data_battgen.command("show")
@arguments.DATUM(type=types.DataParamType(sub_classes=("aiida.data:battgen.structure_batch",)))
@click.option("--limit", default=20, show_default=True, help="Rows to print.")
def batch_show(datum, limit):
    """Print the rows of a structure batch."""
    from battgen.report import format_table

    batch = datum.get_batch()
    rows = [{"row_id": m["row_id"], "formula": s.composition.reduced_formula, "nsites": len(s),
             **{k: v for k, v in m.items() if isinstance(v, int | float | str)}} for m, s in list(batch)[:limit]]
    columns = ["row_id", "formula", "nsites"] + sorted({k for r in rows for k in r} - {"row_id", "formula", "nsites"})
    echo.echo(f"{datum.__class__.__name__}<{datum.pk}>: {datum.n_rows} rows")
    echo.echo(format_table(rows, columns[:10]))


@data_battgen.command("export")
@arguments.DATUM(type=types.DataParamType(sub_classes=("aiida.data:battgen.structure_batch",)))
@click.argument("path", type=click.Path(dir_okay=False))
@decorators.with_dbenv()
def batch_export(datum, path):
    """Write a structure batch to PATH (gzipped JSON lines, readable by battgen.batch.StructureBatch.read)."""
    datum.export_file(path)
    echo.echo_success(f"wrote {datum.n_rows} rows to {path}")
