"""``cir index ann``, ``cir index export-milvus``, ``cir index import-clip-retrieval``: search
and import past one machine's memory (see docs/scale.md)."""

from __future__ import annotations

from pathlib import Path

import click

from cir.cli.index import index_group

COMMANDS: list[click.Command] = []  # registered on the `index` group below


@index_group.command("ann")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option(
    "--max-index-memory",
    required=True,
    help="Memory budget of the approximate index, e.g. 8GB or 512MB; nlist, m and nbits are "
    "picked to fit it.",
)
@click.option("--opq", is_flag=True, help="Rotate the rows with OPQ before quantizing.")
@click.option("--train-rows", type=click.IntRange(min=1), default=None, help="Training sample.")
def ann_command(directory: Path, max_index_memory: str, opq: bool, train_rows: int | None) -> None:
    """Build the IVF-PQ index of the gallery index in DIRECTORY (searched with
    `--backend ivfpq`; results are rescored exactly from the stored rows)."""
    from cir.index.ann import build_ivfpq
    from cir.index.ann_sizing import parse_memory

    budget = parse_memory(max_index_memory)
    sizing = build_ivfpq(directory, budget, opq=opq, train_rows=train_rows)
    click.echo(
        f"built {sizing.factory} over {sizing.rows} rows: about "
        f"{sizing.memory / 1e6:.1f} MB (budget {budget / 1e6:.1f} MB) in {directory}"
    )


@index_group.command("export-milvus")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option(
    "--uri",
    required=True,
    help="A milvus-lite file (./gallery.db) or a cluster (http://host:19530); credentials come "
    "from CIR_MILVUS_TOKEN.",
)
@click.option("--collection", default="cir_gallery", show_default=True)
@click.option(
    "--index-type",
    default="IVF_FLAT",
    show_default=True,
    help="Milvus vector index: IVF_FLAT or FLAT (milvus-lite); HNSW, IVF_PQ, ... on a cluster.",
)
@click.option("--replace", is_flag=True, help="Drop an existing collection of that name first.")
def export_milvus_command(
    directory: Path, uri: str, collection: str, index_type: str, replace: bool
) -> None:
    """Write the rows of the gallery index in DIRECTORY into a Milvus collection (searched with
    `--backend milvus:URI#COLLECTION`)."""
    from cir.index import GalleryIndex
    from cir.index.milvus import connect, export_milvus

    index = GalleryIndex.load(directory, device="cpu")
    count = export_milvus(index, uri, collection, index_type=index_type, replace=replace)
    shown = connect(uri)[1]
    click.echo(f"exported {count} rows of {directory} to {shown} collection {collection!r}")


@index_group.command("import-clip-retrieval")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="New index folder.")
@click.option("--model", required=True, help="The encoder that made the embeddings.")
@click.option("--pretrained", default=None, help="open_clip weights tag (e.g. openai).")
@click.option(
    "--preprocessing",
    type=click.Choice(["default", "targetpad"]),
    default="default",
    show_default=True,
)
def import_command(
    folder: Path, out: Path, model: str, pretrained: str | None, preprocessing: str
) -> None:
    """Make an index from clip-retrieval's FOLDER (img_emb/*.npy + metadata/*.parquet) without
    encoding anything."""
    from cir.index.clip_retrieval import import_clip_retrieval

    index = import_clip_retrieval(folder, out, model, pretrained, preprocessing)
    click.echo(f"imported {len(index)} embeddings ({index.dim}-d) into {out}")
