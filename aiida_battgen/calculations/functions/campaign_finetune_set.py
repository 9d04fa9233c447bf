"""``battgen.campaign_finetune_set``: the training set of a campaign loop's next round.

The previous round's training set plus that round's new survivors (row ids prefixed ``r<round>-`` so rows
of different rounds never collide); a survivor whose row id is already in the set is not added twice. The
survivors' batch is an input, so the fine-tuned model's graph leads back to the candidates it learned from.
"""

from __future__ import annotations

from aiida import orm
from aiida.engine import ExitCode, calcfunction

from aiida_battgen.data.batch import StructureBatchData
from battgen.batch import BatchFormatError, StructureBatch


@calcfunction
def campaign_finetune_set(previous: StructureBatchData, survivors: StructureBatchData, round_index: orm.Int):
    """``previous`` + ``survivors`` (re-labelled ``r<round>-<row_id>``, column ``campaign_round``)."""
    if round_index.value < 1:
        return ExitCode(321, f"`round_index` must be a round number >= 1, got {round_index.value}")
    base = previous.get_batch()
    new = survivors.get_batch()
    prefix = f"r{round_index.value}-"
    known = set(base.row_ids)
    keep = [prefix + row_id not in known for row_id in new.row_ids]
    added = new.select(keep)
    meta = [{**row, "row_id": prefix + row["row_id"], "source_row_id": row["row_id"],
             "campaign_round": round_index.value} for row in added.meta]
    try:
        merged = StructureBatch.concatenate([base, StructureBatch(list(added.structures), meta)])
    except BatchFormatError as exc:
        return ExitCode(323, f"cannot build the fine-tuning set: {exc}")
    return {"structures": StructureBatchData(merged)}
