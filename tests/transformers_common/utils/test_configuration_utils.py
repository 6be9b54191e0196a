"""Project-written stand-in for transformers' `tests/utils/test_configuration_utils.py` (not vendored: the
transformers 5.23.0 sdist on PyPI does not ship tests/utils/). Only `config_common_kwargs` is provided: the
general `PreTrainedConfig` arguments, each set to a non-default value, that `ConfigTester.check_config_arguments_init`
passes to a config and reads back. (That check returns early for composite configs such as `DeemConfig`.)"""

config_common_kwargs = {
    "return_dict": False,
    "output_hidden_states": True,
    "output_attentions": True,
    "dtype": "float16",
    "chunk_size_feed_forward": 5,
    "is_encoder_decoder": True,
    "architectures": ["BertModel"],
    "id2label": {0: "label"},
    "label2id": {"label": "0"},
    "problem_type": "regression",
}
