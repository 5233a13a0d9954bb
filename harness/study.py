"""The study's vocabulary, in one place: every other module imports these names instead of spelling them.

FireAct (Chen et al. 2023) evaluates language models (LMs) with agent methods (prompting, or fine-tuning on
trajectories of a method mix and a task mix) on question sets, with a clean or a noisy search tool.
"""
from __future__ import annotations

# -- agent methods --------------------------------------------------------------------------------
# one generation, no tool; "text" is the plain-lm-eval form of io/cot (the task builds the prompt)
SINGLE_METHODS = ("io", "cot", "text")
# Thought / Action / Observation turns with the search tool; ft is the zero-shot fine-tuned format
TOOL_METHODS = ("react", "reflexion", "ft")
METHODS = SINGLE_METHODS + TOOL_METHODS
PROMPTING = ("io", "cot", "react", "reflexion")  # the few-shot methods a grid may list
TEACHER_METHODS = ("react", "cot", "reflexion")  # what a teacher runs, and what a trajectory is
FINETUNED = "ft"

# Step limits: FireAct's ReAct runs stop after 8 turns; Reflexion reflects at 5, wraps up at 9, so it needs 11.
MAX_STEPS = {"io": 1, "cot": 1, "text": 1, "react": 8, "ft": 8, "reflexion": 11}
REFLECT_AT = {
    5: "Now that I haven't solved the task within 5 steps, I need to figure out how to improve my strategy.",
    9: "Now that I haven't solved the task within 9 steps, I need to wrap up and finish this task in the next step.",
}
# The observation that closes an episode (FireAct writes "Episode finished, reward = ..." after it).
EPISODE_FINISHED = "Episode finished"

# -- tool noise -----------------------------------------------------------------------------------
CLEAN = "clean"
NOISES = (CLEAN, "none", "random")  # none: the observation is "None"; random: another recorded result
NOISE_P = 0.5

# -- question sets ----------------------------------------------------------------------------------
# Evaluation sets of the study (a grid's `datasets`); HotpotQA is the held-in task of fine-tuning.
EVAL_DATASETS = ("hotpotqa", "bamboogle", "strategyqa", "mmlu")
HELD_IN = "hotpotqa"
# Question sets the lm-eval tasks load: task dataset name -> (loader, its options, the agent's prompt set)
TASK_DATASETS = {
    "hotpotqa": ("hotpotqa", {"subset": "fireact500"}),
    "hotpotqa_dev": ("hotpotqa", {"subset": "dev"}),
    "bamboogle": ("bamboogle", {}),
    "strategyqa": ("strategyqa", {}),
    "mmlu": ("mmlu", {"subject": "all"}),
    "jsonl": ("jsonl", {}),
}
# Few-shot prompt set per loader: Bamboogle and user JSONL questions use HotpotQA's examples.
PROMPT_SET = {"hotpotqa": "hotpotqa", "bamboogle": "hotpotqa", "jsonl": "hotpotqa", "strategyqa": "strategyqa",
              "mmlu": "mmlu"}
TRAJECTORY_DATASETS = ("hotpotqa", "strategyqa", "mmlu")  # what FireAct's fine-tuning data covers

# -- fine-tuning data mixes -------------------------------------------------------------------------
METHOD_MIXES = {
    "react": ("react",),
    "react+cot": ("react", "cot"),
    "react+reflexion": ("react", "reflexion"),
    "all": ("react", "cot", "reflexion"),
}
TASK_MIXES = {
    "hotpotqa": ("hotpotqa",),
    "multitask": ("hotpotqa", "strategyqa", "mmlu"),
}

# -- models -----------------------------------------------------------------------------------------
HF_INNER = ("hf", "huggingface", "hf-auto")  # lm-eval's names of its transformers model
LOCAL_INNER = HF_INNER + ("vllm",)  # lm-eval models that load local weights: hashed for identity, fine-tunable


def is_local_hf(inner: str) -> bool:
    """Is this lm-eval model lm-eval's transformers model?"""
    return inner in HF_INNER


def has_local_weights(inner: str) -> bool:
    """Does this lm-eval model run weights on this machine (so they can be hashed, and fine-tuned)?"""
    return inner in LOCAL_INNER


def task_name(dataset: str, method: str, noise: str = CLEAN) -> str:
    """The lm-eval task of a question set, method and noise: fireact_<dataset>[_<method>][_<noise>];
    ReAct (the paper's default) and the clean tool are the unnamed defaults."""
    parts = ["fireact", dataset] + ([method] if method != "react" else []) + ([noise] if noise != CLEAN else [])
    return "_".join(parts)
