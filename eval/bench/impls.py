"""The implementations ``samhq-bench`` (:mod:`eval.bench.speed`) times, each as it is meant to be used.

* :class:`Ours`: :class:`~samhq_jax.predictor.SamHQPredictor` in fp32 or bf16 compute, and the
  jitted ``embed_image`` / ``decode`` it calls (for XLA's FLOP count and buffer plan);
* :class:`Official`: ``segment_anything_hq``'s ``Sam`` and ``SamPredictor``, fp32 or under
  ``torch.autocast`` (bf16 on CPU; bf16, else fp16, on CUDA);
* :class:`HuggingFace`: transformers' ``SamHQModel`` with its ``SamImageProcessor``.

Every stage method returns :class:`Call` objects: zero-argument callables that finish their work
before returning (JAX outputs blocked on, torch CUDA synchronised), so wall-clock time is the
work's. All share one set of weights (see :func:`build_impls`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch

from eval.bench.env import XlaAnalysis, analyse, blocking, jax_device_peak, quiet_warnings, sampled_rss_peak
from eval.bench.env import torch_cuda_peak as _torch_cuda_peak
from eval.bench.memory import lower_decode
from samhq_jax.amg import SamHQAutomaticMaskGenerator
from samhq_jax.config import ModelConfig
from samhq_jax.predictor import SamHQPredictor, compiled_model, decode_steps
from samhq_jax.transforms import apply_boxes

# --skip names: whole implementations, every bf16 row, one side's bf16 rows (the official's
# autocast on a CPU without bf16 instructions can take minutes per image).
SKIPPABLE = ("official", "hf", "bf16", "ours-bf16", "official-bf16", "encoder", "decoder", "end-to-end", "amg")


@dataclasses.dataclass
class Call:
    """One way to run a stage.

    Attributes:
      fn: does the work once and waits for it.
      mode: how the implementation was called (shown in the table).
      scale: factor from one ``fn()`` to the whole stage (``P / k`` when ``fn`` runs k of P
        per-prompt calls: the stage time is extrapolated).
      baseline: the call other rows of the stage are compared with, when this is an official row.
      note: anything the reader must know (a fallback, what is left out).
    """

    fn: Callable[[], Any]
    mode: str
    scale: float = 1.0
    baseline: bool = True
    note: str = ""

    @property
    def extrapolated(self) -> bool:
        return self.scale != 1.0


class Impl:
    """One implementation in one precision: ``key`` (JSON), ``label`` (table), ``dtype`` ``fp32`` / ``bf16``."""

    key: str
    label: str
    dtype: str
    family: str  # "ours", "official", "hf"

    def encoder(self, images: np.ndarray) -> Call:
        """Encode ``(B, S, S, 3)`` normalised, padded NHWC float32 images."""
        raise NotImplementedError

    def decoder(self, image: np.ndarray, boxes: np.ndarray, sample: int) -> list[Call]:
        """Masks for ``boxes (P, 4)`` (pixels of ``image``) on ``image``, encoded beforehand (untimed)."""
        raise NotImplementedError

    def end_to_end(self, image: np.ndarray, box: np.ndarray) -> Call:
        """Set ``image`` and predict one ``box``, as a user does."""
        raise NotImplementedError

    def amg(self, image: np.ndarray, points_per_side: int) -> Call | None:
        """Automatic mask generation on ``image`` (encoding included) with an ``n x n`` point grid
        and the official defaults otherwise; None where this implementation has no timed generator."""
        return None

    def memory(self, fn: Callable[[], Any]) -> dict[str, int | None]:
        """Memory of one more call of ``fn``, as this implementation's device allows."""
        raise NotImplementedError


# ---- ours ---------------------------------------------------------------------------------------
class Ours(Impl):
    """:class:`SamHQPredictor` with compute dtype ``dtype`` (parameters fp32 on the device) and
    matmul / convolution ``precision`` (see :func:`samhq_jax.predictor.compiled_model`)."""

    family = "ours"

    def __init__(self, config: ModelConfig, params: dict, dtype: str, precision: str = "highest") -> None:
        self.dtype, self.key, self.label = dtype, f"ours-{dtype}", f"ours {dtype}"
        self.config = config
        self.params = params
        jdtype = jnp.bfloat16 if dtype == "bf16" else jnp.float32
        self.predictor = SamHQPredictor(config, params, dtype=jdtype, precision=precision)
        _, self._embed, self._decode = compiled_model(config, jdtype, precision)

    def _embed_args(self, images: np.ndarray) -> tuple[dict, jax.Array]:
        return {"params": self.params}, jax.device_put(images)

    def encoder(self, images: np.ndarray) -> Call:
        args = self._embed_args(images)
        return Call(blocking(lambda: self._embed(*args)), "embed_image (jit)")

    def analyse_encoder(self, images: np.ndarray) -> XlaAnalysis:
        """XLA's FLOPs and buffer plan of ``embed_image`` on ``images``."""
        return analyse(self._embed.lower(*self._embed_args(images)))

    def decoder(self, image: np.ndarray, boxes: np.ndarray, sample: int) -> list[Call]:
        pred = self.predictor
        pred.set_image(image)
        if len(boxes) == 1:
            return [Call(blocking(lambda: pred.predict(box=boxes[0], multimask_output=False)), "predict (1 call)")]
        return [
            Call(blocking(lambda: pred.predict_batch(boxes=boxes, multimask_output=False)), "predict_batch (1 call)")
        ]

    def analyse_decoder(self, image: np.ndarray, boxes: np.ndarray) -> XlaAnalysis:
        """XLA's FLOPs and buffer plan of the prompt encoder + HQ decoder for ``boxes`` (post-processing
        to the image size, run outside the compiled decode, not included)."""
        pred = self.predictor
        if pred.original_size is None:
            pred.set_image(image)
        frame = apply_boxes(boxes, pred.original_size, self.config.img_size)[None]
        xla = analyse(lower_decode(self._decode, {"params": self.params}, pred.embeddings, jax.device_put(frame)))
        if xla.flops:  # a decode in prompt chunks is a loop, whose body XLA counts once
            xla.flops *= decode_steps(len(boxes))
        return xla

    def end_to_end(self, image: np.ndarray, box: np.ndarray) -> Call:
        pred = self.predictor

        def run() -> Any:
            pred.set_image(image)
            return pred.predict(box=box, multimask_output=False)

        return Call(blocking(run), "set_image + predict")

    def amg(self, image: np.ndarray, points_per_side: int) -> Call:
        gen = SamHQAutomaticMaskGenerator(self.predictor, points_per_side=points_per_side, progress=False)
        return Call(lambda: gen.generate(image), "SamHQAutomaticMaskGenerator.generate")

    def memory(self, fn: Callable[[], Any]) -> dict[str, int | None]:
        if jax.devices()[0].platform == "cpu":
            return {"rss_peak_delta_bytes": sampled_rss_peak(fn)}
        fn()
        return {"device_process_peak_bytes": jax_device_peak()}


# ---- PyTorch ------------------------------------------------------------------------------------
class TorchImpl(Impl):
    """A PyTorch model on ``device``, fp32 or under ``torch.autocast(autocast)``."""

    def __init__(self, model: torch.nn.Module, device: str, autocast: torch.dtype | None) -> None:
        self.model = model
        self.device = device
        self.autocast = autocast
        self._cached: tuple[np.ndarray, Any] | None = None  # (image, what its encoding left to reuse)

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        """``torch.inference_mode()`` and, for the low-precision rows, ``torch.autocast``."""
        with torch.inference_mode(), contextlib.ExitStack() as stack:
            if self.autocast is not None:
                stack.enter_context(torch.autocast(self.device, dtype=self.autocast))
            yield

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def timed(self, body: Callable[[], Any]) -> Callable[[], Any]:
        """``body`` in :meth:`context`, waited for."""

        def run() -> Any:
            with self.context():
                out = body()
            self.sync()
            return out

        return run

    def tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    def memory(self, fn: Callable[[], Any]) -> dict[str, int | None]:
        if self.device == "cuda":
            return {"cuda_peak_delta_bytes": _torch_cuda_peak(fn)}
        return {"rss_peak_delta_bytes": sampled_rss_peak(fn)}


def _host(t: torch.Tensor) -> np.ndarray:
    """A torch result on the host as NumPy (bf16 through float32, which NumPy lacks)."""
    t = t.detach()
    return (t.float() if t.dtype in (torch.bfloat16, torch.float16) else t).cpu().numpy()


class Official(TorchImpl):
    """``segment_anything_hq``: ``Sam.image_encoder`` and ``SamPredictor``."""

    family = "official"

    def __init__(self, model: torch.nn.Module, device: str, autocast: torch.dtype | None) -> None:
        super().__init__(model, device, autocast)
        self.dtype = "fp32" if autocast is None else "bf16"
        name = {None: "fp32", torch.bfloat16: "bf16-autocast", torch.float16: "fp16-autocast"}[autocast]
        self.key, self.label = f"official-{self.dtype}", f"official {name}"

    def encoder(self, images: np.ndarray) -> Call:
        x = self.tensor(images.transpose(0, 3, 1, 2))
        return Call(self.timed(lambda: self.model.image_encoder(x)), "image_encoder")

    def _predictor(self, image: np.ndarray) -> Any:
        """A ``SamPredictor`` with ``image`` set (kept for the next stage on the same image)."""
        with quiet_warnings():
            from segment_anything_hq import SamPredictor

        if self._cached is not None and self._cached[0] is image:
            return self._cached[1]
        pred = SamPredictor(self.model)
        with self.context():
            pred.set_image(image)
        self._cached = image, pred
        return pred

    def _one_prompt(self, pred: Any, box: np.ndarray) -> tuple[Callable[[np.ndarray], Any], str, str]:
        """``(predict one box, what it is called, note)``: ``SamPredictor.predict``, or where that
        fails (under bf16 autocast its ``.numpy()`` meets a bf16 tensor) ``predict_torch`` for one
        box with the outputs copied to the host as float32."""
        try:
            with self.context():
                pred.predict(box=box, multimask_output=False)
        except TypeError as err:
            note = (
                f"predict() fails under autocast ({type(err).__name__}: {err}); "
                "timed predict_torch one box per call, outputs .float().numpy()"
            )

            def predict_torch_one(b: np.ndarray) -> Any:
                boxes = self.tensor(pred.transform.apply_boxes(b[None], pred.original_size).astype(np.float32))
                masks, iou, low = pred.predict_torch(None, None, boxes=boxes, multimask_output=False)
                return _host(masks[0]), _host(iou[0]), _host(low[0])

            return predict_torch_one, "predict_torch (1 box)", note
        return lambda b: pred.predict(box=b, multimask_output=False), "predict", ""

    def decoder(self, image: np.ndarray, boxes: np.ndarray, sample: int) -> list[Call]:
        pred = self._predictor(image)
        one, name, note = self._one_prompt(pred, boxes[0])
        count = len(boxes)
        k = min(count, sample)
        per_prompt = self.timed(lambda: [one(b) for b in boxes[:k]])
        if count == 1:
            return [Call(per_prompt, f"{name} (1 call)", note=note)]
        how = f"{name} x{count}" + (f" (extrapolated from {k} calls)" if k < count else "")
        calls = [Call(per_prompt, how, scale=count / k, baseline=False, note=note)]
        frame = self.tensor(pred.transform.apply_boxes(boxes, pred.original_size).astype(np.float32))

        def batched() -> Any:
            masks, iou, low = pred.predict_torch(None, None, boxes=frame, multimask_output=False)
            return _host(masks), _host(iou), _host(low)

        calls.append(Call(self.timed(batched), "predict_torch (1 call)"))
        return calls

    def end_to_end(self, image: np.ndarray, box: np.ndarray) -> Call:
        pred = self._predictor(image)
        one, name, note = self._one_prompt(pred, box)

        def run() -> Any:
            pred.set_image(image)
            return one(box)

        return Call(self.timed(run), f"set_image + {name}", note=note)

    def amg(self, image: np.ndarray, points_per_side: int) -> Call | None:
        if self.dtype != "fp32":  # its generator's predict path meets bf16 tensors under autocast
            return None
        with quiet_warnings():
            from segment_anything_hq import SamAutomaticMaskGenerator

        gen = SamAutomaticMaskGenerator(self.model, points_per_side=points_per_side)
        return Call(self.timed(lambda: gen.generate(image)), "SamAutomaticMaskGenerator.generate")


class HuggingFace(TorchImpl):
    """transformers ``SamHQModel`` (fp32) with a ``SamImageProcessor`` for the model's input size."""

    family = "hf"
    dtype = "fp32"
    key = "hf-fp32"
    label = "HF SamHQModel fp32"

    def __init__(self, model: torch.nn.Module, device: str, img_size: int) -> None:
        super().__init__(model, device, None)
        from transformers import SamImageProcessor

        self.img_size = img_size
        self.processor = SamImageProcessor(
            size={"longest_edge": img_size}, pad_size={"height": img_size, "width": img_size}
        )

    def encoder(self, images: np.ndarray) -> Call:
        x = self.tensor(images.transpose(0, 3, 1, 2))
        return Call(self.timed(lambda: self.model.get_image_embeddings(x)), "get_image_embeddings")

    def _inputs(self, image: np.ndarray) -> dict[str, Any]:
        return self.processor(images=image, return_tensors="pt")

    def _frame_boxes(self, boxes: np.ndarray, image: np.ndarray) -> torch.Tensor:
        """``(1, P, 4)`` boxes in the resized input frame (what ``SamHQProcessor`` hands the model)."""
        return self.tensor(apply_boxes(boxes, image.shape[:2], self.img_size)[None])

    def _masks(self, out: Any, inputs: dict[str, Any]) -> tuple[Any, np.ndarray]:
        masks = self.processor.post_process_masks(
            out.pred_masks.cpu(), inputs["original_sizes"], inputs["reshaped_input_sizes"]
        )
        return masks, _host(out.iou_scores)

    def _embedded(self, image: np.ndarray) -> tuple[dict[str, Any], torch.Tensor, list[torch.Tensor]]:
        """``(processor outputs, image embeddings, intermediate embeddings)`` of ``image`` (kept for
        the next stage on the same image)."""
        if self._cached is None or self._cached[0] is not image:
            inputs = self._inputs(image)
            with self.context():
                emb, interm = self.model.get_image_embeddings(inputs["pixel_values"].to(self.device))
            self._cached = image, (inputs, emb, interm)
        return self._cached[1]

    def decoder(self, image: np.ndarray, boxes: np.ndarray, sample: int) -> list[Call]:
        inputs, emb, interm = self._embedded(image)
        frame = self._frame_boxes(boxes, image)

        def run() -> Any:
            out = self.model(
                image_embeddings=emb, intermediate_embeddings=interm, input_boxes=frame, multimask_output=False
            )
            return self._masks(out, inputs)

        return [Call(self.timed(run), "model(image_embeddings=...) + post_process_masks (1 call)")]

    def end_to_end(self, image: np.ndarray, box: np.ndarray) -> Call:
        frame = self._frame_boxes(box[None], image)

        def run() -> Any:
            inputs = self._inputs(image)
            out = self.model(
                pixel_values=inputs["pixel_values"].to(self.device), input_boxes=frame, multimask_output=False
            )
            return self._masks(out, inputs)

        return Call(self.timed(run), "processor + model + post_process_masks")


# ---- one set of weights for all -----------------------------------------------------------------
def torch_device() -> str:
    """``"cuda"`` where torch sees a GPU, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def autocast_dtype(device: str) -> torch.dtype:
    """The official low-precision row's autocast dtype: bf16 on CPU and on GPUs that support it, else fp16."""
    if device == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def build_impls(config: ModelConfig, skip: set[str], seed: int = 0, precision: str = "highest") -> list[Impl]:
    """Every implementation not in ``skip``, sharing one seeded random set of weights.

    The official model is built and randomised (:func:`eval.reference.build_official`); its state
    dict converted is ours (:func:`convert.core.state_dict_to_params`), and ours exported in
    Hugging Face names (:func:`convert.core.params_to_state_dict`) is loaded into ``SamHQModel``, so
    all three compute the same function (up to HF's two-way LayerNorm eps). A model with no Hugging
    Face form (vit_tiny) has no HF row.
    """
    from convert.core import HF, params_to_state_dict, state_dict_to_params
    from eval.reference import build_hf, build_official
    from samhq_jax.hf_config import has_hf_form

    with quiet_warnings():
        official = build_official(config, seed=seed)
    _, params = state_dict_to_params({k: v.numpy() for k, v in official.state_dict().items()}, config)
    device_params = jax.device_put(params)  # on the device once, as load_pretrained does
    impls: list[Impl] = [Ours(config, device_params, "fp32", precision)]
    if not skip & {"bf16", "ours-bf16"}:
        impls.append(Ours(config, device_params, "bf16", precision))
    device = torch_device()
    if "official" not in skip:
        official = official.to(device)
        impls.append(Official(official, device, None))
        if not skip & {"bf16", "official-bf16"}:
            impls.append(Official(official, device, autocast_dtype(device)))
    if "hf" not in skip and has_hf_form(config):  # no SamHQModel holds vit_tiny's TinyViT
        with quiet_warnings():
            hf = build_hf(config, seed=seed)
            state = params_to_state_dict(params, HF)
            result = hf.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
        tied = set(getattr(hf, "_tied_weights_keys", None) or ()) | set(hf._keys_to_ignore_on_load_missing or ())
        missing = [k for k in result.missing_keys if k not in tied]
        if missing or result.unexpected_keys:
            raise RuntimeError(
                f"HF export does not fit SamHQModel: missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}"
            )
        impls.append(HuggingFace(hf.to(device).eval(), device, config.img_size))
    return impls
