"""The paper's numbers, as gathered in ``../shared/docs/codefusion-paper.md``.

Tags follow that page: "paper" stated in summaries of the paper, "est" from one secondary
source. ``None``: not reported there.
"""

from __future__ import annotations

# benchmark -> system -> {"top1", "top3", "top5"} (%), with the metric the paper used.
PAPER_TOPK: dict[str, dict] = {
    "python": {
        "metric": "CodeBERTScore",
        "CodeFusion 75M": {"top1": 80.7, "top3": None, "top5": 90.3, "tag": "est"},
        "GPT-3 175B": {"top1": 82.5, "top3": None, "top5": 85.8, "tag": "est"},
    },
    "bash": {
        "metric": "template match (NL2Bash)",
        "CodeFusion 75M": {"top1": None, "top3": None, "top5": 72.0, "tag": "est"},
        "CodeT5 770M": {"top1": None, "top3": None, "top5": 70.5, "tag": "est"},
    },
    "cf": {
        "metric": "execution match",
        "CodeFusion 75M": {"top1": None, "top3": None, "top5": 78.5, "tag": "est"},
        "CodeT5 770M": {"top1": None, "top3": None, "top5": 75.8, "tag": "est"},
    },
}

# Which of our figures stands beside the paper's numbers, where it is not our main top-k (a key
# of metrics.json). Bash: the paper's numbers were probably computed with NL2Bash's official
# evaluation, which cannot template, or match to itself, the gold of 526 of the 2,522 test items
# (under it a perfect model scores 79.1%); our template match scores every item, so the paper's
# numbers stand beside our NL2Bash-comparable figure (items correct among those 1,996, over all
# 2,522), not beside our template match on all items.
# CF: 114 of the 178 test golds name columns (c[i]) that no training rule or snippet has; the
# paper does not say how it scored them, and a spreadsheet applies a rule to the range the user
# selected, so the paper's numbers stand beside our selection-applied figure (metrics.json's
# figures.selection_applied), under which the gold with its columns removed scores 173/178.
BESIDE_PAPER = {"bash": "nl2bash_comparable", "cf": "selection_applied"}

# Syntactically valid top-1 (%) [est].
PAPER_VALIDITY = {
    "python": {"CodeFusion": 67.6, "GENIE": 24.2},
    "bash": {"CodeFusion": 73.4, "GENIE": 54.2},
    "cf": {"CodeFusion": 94.5, "GENIE": 78.6},
}

# Diversity of the top-5 [est]; the paper's exact definitions are unknown.
PAPER_DIVERSITY = {
    "4-gram diversity": {"CodeFusion": 0.81, "StarCoder": 0.61},
    "mean normalised edit distance": {"CodeFusion": 0.57, "GPT-3": 0.21},
}
