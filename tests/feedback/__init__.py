"""Feedback and reviewers: records, the review queue, agreement, import/export, blind comparisons."""
