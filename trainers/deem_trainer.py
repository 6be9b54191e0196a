"""DeemTrainer: transformers' Trainer with DEEM's three losses logged apart and the stages' parameter groups."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.utils import logging

from .stages import NO_WEIGHT_DECAY_GROUPS, StageRecipe, apply_stage, get_stage, parameter_group

LOSS_PARTS = ("ntp_loss", "nip_loss", "csr_loss")
logger = logging.get_logger(__name__)


class DeemLossMixin:
    """What DEEM adds to a transformers `Trainer` (or a subclass such as TRL's `SFTTrainer`): the model's own
    `L = L_NTP + λ·L_NIP + λ·L_CSR`, each part logged at every logging step in training and evaluation, and the
    stage recipe's frozen parts, loss weights and per-group learning rates (frozen parameters get no optimizer
    state). A `learning_rate` given in the arguments scales all of the recipe's rates by the same factor."""

    loss_is_scaled_for_ga = False  # the model returns per-batch means

    def __init__(self, *args: Any, stage: str | StageRecipe | None = None, **kwargs: Any) -> None:
        self.stage = get_stage(stage) if stage is not None else None
        model = kwargs.get("model") if "model" in kwargs else (args[0] if args else None)
        if self.stage is not None and model is not None:
            apply_stage(model, self.stage)
        training_args = kwargs.get("args")
        if training_args is not None and training_args.remove_unused_columns:
            # DEEM's collators read the raw columns (text/messages, images, masks); Trainer would drop them.
            logger.warning("DeemTrainer sets remove_unused_columns=False: its collator needs the raw columns.")
            training_args.remove_unused_columns = False
        if training_args is not None and getattr(training_args.accelerator_config, "dispatch_batches", None) is None:
            # Per-image tensors are not batch-major: accelerate's dispatcher (iterable datasets) would slice them.
            training_args.accelerator_config.dispatch_batches = False
        if training_args is not None and 1 <= training_args.warmup_steps and 0 < training_args.max_steps <= \
                training_args.warmup_steps:
            logger.warning(f"warmup_steps={training_args.warmup_steps:g} is not shorter than max_steps="
                           f"{training_args.max_steps}: the learning rate never reaches {training_args.learning_rate:g}."
                           " (StageRecipe.training_arguments fits the warm-up to the run.)")
        super().__init__(*args, **kwargs)
        deem = self._deem
        if self.processing_class is not None and getattr(deem, "processor", False) is None:
            deem.processor = self.processing_class  # model.save_pretrained then writes it too
        self.add_callback(_CollatorEpoch(self.data_collator))
        self._loss_parts: dict[str, dict[str, list[torch.Tensor]]] = {"train": defaultdict(list), "eval": defaultdict(list)}

    @property
    def _deem(self) -> nn.Module:
        """The DEEM model itself, under peft's wrapper if there is one."""
        return getattr(self.model, "get_base_model", lambda: self.model)()

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        outputs = model(**inputs)
        if outputs.loss is None:
            raise ValueError("The model returned no loss: the batch needs labels or decoder_pixel_values.")
        mode = "train" if model.training else "eval"
        for part in LOSS_PARTS:
            value = getattr(outputs, part, None)
            if value is not None:  # kept on the device: no sync per step, only when logging (as Trainer does)
                self._loss_parts[mode][part].append(value.detach().float())
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        prefix = "eval_" if mode == "eval" else ""
        parts = self._loss_parts[mode]
        # Every process reduces every part, in a fixed order (one may have no NIP value where another has some):
        # the mean is over all processes' values, and no process waits on a collective the others skip.
        # Summed where the values are and read back once (one device sync per logging step, not one per part).
        device = next((values[0].device for values in parts.values() if values), self.args.device)
        totals = torch.stack([torch.stack(parts[p]).sum() if parts[p] else torch.zeros((), device=device)
                              for p in LOSS_PARTS]).double()
        counts = torch.tensor([len(parts[p]) for p in LOSS_PARTS], dtype=torch.float64, device=device)
        sums = torch.stack([totals, counts], dim=1)
        if self.args.world_size > 1:
            sums = self.accelerator.reduce(sums.to(self.args.device), reduction="sum")
        sums = sums.cpu()
        for part, (total, count) in zip(LOSS_PARTS, sums.tolist()):
            if count:
                logs[f"{prefix}{part}"] = round(total / count, 6)
        parts.clear()
        super().log(logs, start_time)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Trainer's save (final and every checkpoint), after recording the training on the model: the model card
        that `save_pretrained` writes reads `model.training_summary`."""
        self._deem.training_summary = self.training_summary()
        super().save_model(output_dir, _internal_call)

    def training_summary(self) -> dict[str, Any]:
        """The stage recipe, the step and the last logged losses (see `modeling_deem.model_card_deem`)."""
        history = self.state.log_history
        train = next((entry for entry in reversed(history) if "loss" in entry), {})
        evaluation = next((entry for entry in reversed(history) if "eval_loss" in entry), {})
        config = self._deem.config
        summary: dict[str, Any] = {
            "stage": self.stage.name if self.stage is not None else None,
            "trainable_groups": list(self.stage.trainable_groups) if self.stage is not None else None,
            "loss_weights": {"nip": config.nip_loss_weight, "csr": config.csr_loss_weight},
            "global_step": self.state.global_step, "max_steps": self.state.max_steps, "epoch": self.state.epoch,
            "losses": {key: train[key] for key in ("loss", *LOSS_PARTS) if key in train},
            "eval_losses": {key: evaluation[key] for key in ("eval_loss", *(f"eval_{p}" for p in LOSS_PARTS))
                            if key in evaluation},
        }
        if "step" in train:
            summary["losses_step"] = train["step"]
        return summary

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        with own_class(self.model):
            super()._save(output_dir, state_dict=state_dict)

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """Per-group learning rates from the stage recipe (or one rate without a stage); decay as Trainer does."""
        if self.optimizer is not None or self.stage is None:
            return super().create_optimizer(model) if self.stage is None else self.optimizer
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        groups: dict[tuple[float, float], list[nn.Parameter]] = defaultdict(list)
        for name, parameter in opt_model.named_parameters():
            if not parameter.requires_grad:
                continue
            group = parameter_group(name)
            lr = self.stage.learning_rates[group]
            lr *= self.args.learning_rate / self.stage.peak_learning_rate
            decays = name in decay and group not in NO_WEIGHT_DECAY_GROUPS
            groups[(lr, self.args.weight_decay if decays else 0.0)].append(parameter)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        optimizer_kwargs.pop("lr", None)
        param_groups = [{"params": params, "lr": lr, "weight_decay": wd} for (lr, wd), params in groups.items()]
        self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
        return self.optimizer


@contextmanager
def own_class(model: nn.Module) -> Iterator[None]:
    """The model as an instance of its own class for a while. FSDP2 (`fully_shard`) turns it into an instance of
    a class it generates (`FSDPDeemForConditionalGeneration`, defined in torch): saved as that, the folder's
    `auto_map` and remote code would be torch's FSDP files instead of DEEM's."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch without distributed
        FSDPModule = ()
    generated = type(model)
    if not FSDPModule or not isinstance(model, FSDPModule):
        yield
        return
    model.__class__ = next(c for c in generated.__mro__ if not issubclass(c, FSDPModule))
    try:
        yield
    finally:
        model.__class__ = generated


class DeemTrainer(DeemLossMixin, Trainer):
    """`transformers.Trainer` for DEEM; see `DeemLossMixin` for what it adds."""


class _CollatorEpoch(TrainerCallback):
    """Tells the collator the epoch (restored on resume), so augmentation differs per epoch yet repeats exactly."""

    def __init__(self, collator: Any) -> None:
        self.collator = getattr(collator, "collator", collator)  # a packing collator wraps the real one

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if hasattr(self.collator, "epoch"):
            self.collator.epoch = int(state.epoch or 0)
