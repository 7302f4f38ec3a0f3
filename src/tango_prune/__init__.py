"""tango-prune: training-free visual-token pruning for Video LLMs (Tango, arXiv 2604.09547)."""
from .config import SINKS, TangoConfig
from .methods import get_method, list_methods, register
from .models import apply
from .models.llm_stage import LLMStage
from .pruner import prune_video_tokens
from .types import Pruned, VideoTokens

__all__ = [
    "SINKS",
    "LLMStage",
    "Pruned",
    "TangoConfig",
    "apply",
    "VideoTokens",
    "get_method",
    "list_methods",
    "prune_video_tokens",
    "register",
]
__version__ = "0.1.0"
