"""ChexReason: R1-style (SFT -> GRPO) chest X-ray labelling, after arXiv 2512.23090.

Modules: `labels` (the label vocabulary), `prompts` (prompt variants and SFT answer formats),
`parsing` (the one output parser), `rewards` (GRPO rewards), `metrics` (scores and bootstrap
intervals), `results` (results schema and the paper's reported numbers).
"""

__version__ = "0.1.0"
