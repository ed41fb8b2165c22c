"""``samhq parity``: stage-by-stage numerical parity between samhq-jax and the PyTorch SAM-HQ references.

Two modes, one report::

    python -m eval.parity --preset vit_b            # seeded random weights, every tensor randomised
    samhq parity --checkpoint sam_hq_vit_l.pth --image dog.jpg [--image cat.png ...]
                 [--prompts prompts.jsonl] [--dtype float32|bfloat16] [--precision default|highest]
                 [--json figures.json]

The checkpoint goes through :func:`samhq_jax.checkpoint.read_weights` on our side; the reference is
chosen by what the checkpoint is: an official ``.pth`` / ``.safetensors`` file is loaded into the
official ``segment_anything_hq`` ``Sam`` (tensors straight from the file); a Hugging Face folder
into transformers' ``SamHQModel.from_pretrained``; one of our directories is exported back
(:func:`convert.core.params_to_state_dict`) to the official model, or to ``SamHQModel`` when its
two-way LayerNorm eps is Hugging Face's. Original SAM checkpoints (no HQ tensors in the file) are
refused: convert one with ``samhq convert`` (its HQ part is then initialised and saved) and compare
that directory.

Each photo is pre-processed once with :func:`samhq_jax.transforms.preprocess` and the same
normalised pixels go to both models. Errors are ``max |ours - ref| / max |ref|`` per stage: the
image encoder's (patch embedding, every block, neck, embeddings, early feature), then for each
prompt set x ``multimask_output`` x ``hq_token_only`` the decoder's (prompt embeddings, two-way
transformer, all masks and IoUs, the selected low-res masks and IoU), each decoder fed the
reference's image embeddings, and the agreement of the binarised low-res masks. For photos, also
end to end: the reference's own pre-processing against ours, and the full-size masks of each
side's whole chain (own embeddings, own decoder, own post-processing). Prompts are
``--prompts`` JSON lines in image pixels (the ``samhq predict --prompts`` format) or, by default,
derived from each photo's size: two centred boxes, a centre point with a background point, point +
box, and point + the reference's low-res mask for the first box fed back.

Exit status: 0 when every figure is within the bar (:data:`PARITY_RTOL`, :data:`MIN_MASK_AGREEMENT`
of :mod:`~eval.parity.stages`), 1 when not, 2 for usage errors (missing files, unreadable checkpoint /
image / prompts line, missing references).

Modules: :mod:`~eval.parity.stages` (the stage arrays, the prompts and the error measures both sides
share), :mod:`~eval.parity.official` and :mod:`~eval.parity.hf` (the PyTorch references' stages),
:mod:`~eval.parity.ours` (ours), :mod:`~eval.parity.samples` (sample photos and random prompts),
:mod:`~eval.parity.scenarios` (prompts in image pixels), :mod:`~eval.parity.report` (the figures
and the verdict), :mod:`~eval.parity.engine` (one comparison), :mod:`~eval.parity.modes` (the
checkpoint and preset modes) and :mod:`~eval.parity.cli` (the command line).
"""
