"""DeemSFTTrainer: TRL's SFTTrainer for DEEM's instruction stages (II/III), keeping the CSR term.

TRL prepares text-only datasets itself; DEEM rows carry images, region masks and the decoder view that CSR
needs, so dataset preparation is skipped and `DeemDataCollator` builds the batches (assistant-only labels from
the chat template). TRL's own loss path (fused LM head, entropy/accuracy from logits) is replaced by the model's
`L_NTP + λ·L_CSR`; TRL's configuration, logging and integrations stay.
"""

from __future__ import annotations

import copy
from typing import Any

from trl import SFTConfig, SFTTrainer

from .collator import DeemDataCollator
from .deem_trainer import DeemLossMixin
from .lora import modules_trained_in_full
from .stages import StageRecipe, get_stage


class DeemSFTTrainer(DeemLossMixin, SFTTrainer):
    def __init__(
        self,
        model: Any,
        args: SFTConfig,
        processing_class: Any,
        stage: str | StageRecipe = "stage2",
        data_collator: Any = None,
        **kwargs: Any,
    ) -> None:
        recipe = get_stage(stage)
        peft_config = kwargs.get("peft_config")
        if peft_config is not None and getattr(peft_config, "modules_to_save", None) is None:
            # TRL wraps the model with this config; without it peft would freeze everything the stage trains
            # outside the adapters (resamplers, MMFS, ...). An explicit list is the caller's choice.
            # A copy: the caller's config is left as it was (it may serve another model or stage).
            peft_config = copy.copy(peft_config)
            peft_config.modules_to_save = modules_trained_in_full(model, recipe)
            kwargs["peft_config"] = peft_config
        args.dataset_kwargs = {**(args.dataset_kwargs or {}), "skip_prepare_dataset": True}
        collator = data_collator or DeemDataCollator(processing_class, decoder_views=recipe.with_image_decoder,
                                                     seed=args.seed)
        super().__init__(model=model, args=args, processing_class=processing_class, data_collator=collator,
                         stage=recipe, **kwargs)
