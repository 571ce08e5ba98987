"""A real headless Chromium drives the admin and the reviewers' pages."""
