"""Training, checkpoints, configs and the train/generate command lines."""
from .checkpoint import CheckpointError, CheckpointWriteError, load_checkpoint, load_model, save_checkpoint
from .config import ConfigError, RunConfig, TrainConfig, load_config, parse_config
from .trainer import Trainer

__all__ = ["Trainer", "TrainConfig", "RunConfig", "load_config", "parse_config", "ConfigError", "save_checkpoint",
           "load_checkpoint", "load_model", "CheckpointError", "CheckpointWriteError"]
