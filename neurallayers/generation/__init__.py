"""Text generation: GenerationConfig and result types, generate / stream / generate_ids, logits processors."""

from neurallayers.generation.config import Generation, GenerationConfig, StreamEvent, TokenLogprob
from neurallayers.generation.generate import generate, generate_ids, stream

__all__ = ["Generation", "GenerationConfig", "StreamEvent", "TokenLogprob", "generate", "generate_ids", "stream"]
