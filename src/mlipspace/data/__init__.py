"""Structures in: readers, the builtin ``mad-mini`` dataset, checks and train/test splits.

Public API::

    read(spec, index=":", on_error="raise")   # paths, globs, lists, builtin:NAME[?size=N&seed=S]
    builtin(name="mad-mini", size=None, seed=0)
    fingerprint(frames)                        # sha256 of numbers/positions/cell/pbc
    validate(frames, on_error="raise")         # -> (frames, report)
    consistent(frames, models)                 # -> (frames every model supports, report)
    atom_split / grouped_split / structure_split / seeds   (also as mlipspace.data.splits)
"""

from mlipspace.data import splits
from mlipspace.data.synthetic import MAD_MINI_ELEMENTS, MAD_MINI_SUBSETS, builtin, mad_mini
from mlipspace.data.checks import MIN_DISTANCE, consistent, fingerprint, validate
from mlipspace.data.readers import (
    is_mlearn_json,
    normalise_labels,
    read,
    read_mlearn,
    read_with_report,
    structure_dict_to_atoms,
    write,
)
from mlipspace.data.rows import check_aligned, concat_rows, row_table
from mlipspace.data.splits import atom_split, grouped_split, seeds, structure_split

__all__ = [
    "read",
    "read_with_report",
    "read_mlearn",
    "is_mlearn_json",
    "structure_dict_to_atoms",
    "normalise_labels",
    "write",
    "builtin",
    "mad_mini",
    "MAD_MINI_ELEMENTS",
    "MAD_MINI_SUBSETS",
    "fingerprint",
    "validate",
    "consistent",
    "MIN_DISTANCE",
    "splits",
    "atom_split",
    "grouped_split",
    "structure_split",
    "seeds",
    "row_table",
    "concat_rows",
    "check_aligned",
]
