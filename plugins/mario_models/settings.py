"""The model components' own options: ``[model.impala]`` and ``[model.transformer]``.

Pydantic only, so the config loads them without importing torch.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from mario_cli.api import ComponentSettings


class ImpalaSettings(ComponentSettings):
    """The IMPALA-CNN backbone (Espeholt et al. 2018): residual stages."""

    legacy_keys: ClassVar[dict[str, str]] = {
        "impala_channels": "channels",
        "impala_blocks": "blocks",
    }

    channels: list[int] = Field(
        default_factory=lambda: [16, 32, 32], description="Channels per stage."
    )
    blocks: int = Field(2, ge=0, description="Residual blocks per stage.")


class TransformerSettings(ComponentSettings):
    """The transformer core: causal attention over the last ``window`` steps."""

    legacy_keys: ClassVar[dict[str, str]] = {
        "transformer_window": "window",
        "transformer_layers": "layers",
        "transformer_heads": "heads",
    }

    window: int = Field(16, ge=1, description="Steps it attends to.")
    layers: int = Field(2, ge=1, description="Encoder layers.")
    heads: int = Field(4, ge=1, description="Attention heads (must divide its width).")
