"""The file names of a checkpoint folder (released layout plus ours), defined once for every reader and writer.

Component files (``{component}--{step|latest}_checkpoint.pt``) are named by ``prismatic.policy.components``.
"""

WEIGHTS_NAME = "model.safetensors"  # merged model, one file
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"  # merged model, sharded
LORA_ADAPTER_DIR = "lora_adapter"  # peft adapter folder
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"  # in LORA_ADAPTER_DIR
PROCESSOR_FILES = ("preprocessor_config.json", "tokenizer_config.json")
DATASET_STATISTICS_NAME = "dataset_statistics.json"  # action/proprio statistics, keyed by dataset name
POLICY_CONFIG_NAME = "policy_config.json"  # the policy's choices (ours)
BASE_MODEL_RECORD_NAME = "base_model.json"  # the base model an adapter was trained on (ours)
TRAINING_CONFIG_NAME = "training_config.json"  # the run's flags, in a run folder (ours)
STEP_CHECKPOINT_SUFFIX = "_chkpt"  # training's step folders: <run folder>--<step>_chkpt, beside the run folder
