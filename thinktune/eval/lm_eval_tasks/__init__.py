"""lm-eval-harness task YAMLs shipped with thinktune; the bridge (thinktune/eval/lm_eval_bridge.py) always indexes
this folder."""
