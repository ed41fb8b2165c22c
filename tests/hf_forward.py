"""Run a saved Hugging Face SamHQModel folder on saved inputs; used in a subprocess so a second
transformers release (one with the 4.54+ mask regression) can be imported beside the pinned one.

Usage: python tests/hf_forward.py MODEL_DIR INPUTS.npz OUTPUTS.npz
"""

import sys

import numpy as np
import torch
import transformers
from transformers import SamHQModel


def main() -> None:
    model_dir, inputs, outputs = sys.argv[1:4]
    data = dict(np.load(inputs))
    model = SamHQModel.from_pretrained(model_dir).eval()
    with torch.no_grad():
        out = model(
            pixel_values=torch.from_numpy(data["pixel_values"]),
            input_points=torch.from_numpy(data["input_points"]),
            input_labels=torch.from_numpy(data["input_labels"]),
            multimask_output=bool(data["multimask_output"]),
        )
    np.savez(
        outputs,
        iou_scores=out.iou_scores.numpy(),
        pred_masks=out.pred_masks.numpy(),
        version=np.array(transformers.__version__),
    )


if __name__ == "__main__":
    main()
