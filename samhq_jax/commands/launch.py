"""What ``samhq predict`` and ``samhq everything`` do between checking their inputs and their first
image: join the processes of the run (``--coordinator`` / ``--num-processes`` / ``--process-id``),
take this process's contiguous share of the inputs, load the checkpoint onto the data mesh of its
devices (a :class:`~samhq_jax.mesh_predictor.MeshPredictor`), and, from process 0, say how the
images are shared out. The model is imported only here, after the inputs are checked.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from samhq_jax.cmdkit.args import announce_share, distributed_flags, progress_label
from samhq_jax.cmdkit.guard import doing

if TYPE_CHECKING:
    from samhq_jax.mesh_predictor import MeshPredictor


@dataclasses.dataclass
class Launch:
    """A command's run in this process.

    Attributes:
      predictor: the checkpoint on this process's devices, one image per device.
      mine: this process's share of the inputs, in their order.
      out_dir: ``--output``, created.
      label: the progress bar's label (with ``[process I]`` when there are several).
    """

    predictor: MeshPredictor
    mine: list[Any]
    out_dir: Path
    label: str

    def batches(self) -> Iterator[list[Any]]:
        """``mine`` in runs of one input per device (the last run may be shorter)."""
        lanes = self.predictor.lanes
        for start in range(0, len(self.mine), lanes):
            yield self.mine[start : start + lanes]


def launch(prog: str, args: argparse.Namespace, inputs: list[Any]) -> Launch:
    """Join the run the flags describe, take this process's share of ``inputs`` (checked already)
    and load ``--checkpoint`` onto this process's devices; ``prog`` names the command in messages."""
    import jax

    from samhq_jax.distributed import setup, share
    from samhq_jax.mesh_predictor import MeshPredictor

    mesh = setup(distributed_flags(args))  # before anything touches a device
    mine = share(inputs)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    process = jax.process_index(), jax.process_count()
    announce_share(prog, len(inputs), len(mine), mesh.size, 1, process)
    with doing(f"loading the checkpoint {args.checkpoint}"):
        predictor = MeshPredictor.from_pretrained(args.checkpoint, mesh)
    return Launch(predictor, mine, out_dir, progress_label(prog, process))
